"""Runtimes (base.py: the contract and loader; one module per runtime, imported when asked for)."""

from __future__ import annotations

from hwnas_agent.runtimes.base import (  # noqa: F401
    LoadedModel,
    Runtime,
    RuntimeUnavailable,
    load,
    runtime,
)

__all__ = ['LoadedModel', 'Runtime', 'RuntimeUnavailable', 'load', 'runtime']
