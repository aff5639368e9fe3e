"""Base models (core.py, build.py, stages.py, transformers.py, saved.py, unsupported.py)."""

from __future__ import annotations

from hwnas.models.core import (  # noqa: F401
    PRUNABLE,
    SmallCNN,
    build_builtin,
    first_line,
    model_stages,
    output_channels,
    output_layers,
    prunable_layers,
    run_once,
    unwrapped_parameters,
)

__all__ = ['PRUNABLE', 'SmallCNN', 'build_builtin', 'first_line', 'model_stages',
           'output_channels', 'output_layers', 'prunable_layers', 'run_once',
           'unwrapped_parameters']
