"""Architectures torch-pruning's dependency graph cannot follow (tried with torch-pruning 1.6
and torchvision 0.29): the search refuses to prune them and says why, before any trial."""

from __future__ import annotations

from torch import nn

# class name -> why
UNSUPPORTED = {
    "SwinTransformer": "its shifted-window attention: torch-pruning's dependency graph does "
                       "not finish tracing it",
    "MaxVit": "its block/grid attention: torch-pruning's dependency graph does not finish "
              "tracing it",
    "ShuffleNetV2": "its channel shuffle: torch-pruning's dependency graph cannot map channels "
                    "through the shuffle's reshape (ZeroDivisionError)",
}


def unsupported_module(model: nn.Module) -> tuple[str, str, str] | None:
    """(module name, class name, why) of the first module of an unsupported architecture."""
    for name, module in model.named_modules():
        why = UNSUPPORTED.get(type(module).__name__)
        if why is not None:
            return name or "(the model)", type(module).__name__, why
    return None
