"""Power sensors (base.py: the contract, kinds, detection; one module per sensor kind)."""

from __future__ import annotations

from hwnas_agent.power.base import (  # noqa: F401
    KINDS,
    PowerSample,
    PowerSource,
    SCOPES,
    SensorUnavailable,
    check_scope,
    detect,
    open_source,
)

__all__ = ['KINDS', 'PowerSample', 'PowerSource', 'SCOPES', 'SensorUnavailable',
           'check_scope', 'detect', 'open_source']
