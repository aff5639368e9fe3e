"""Base models: the built-in small CNN, a user factory, or a torchvision model (build.py).

A model's stages (named groups of layers the width knob scales) come from
``base_model.stages`` in the search space, a ``stages()`` method of the model, or its
structure (stages.py); ``hwnas.train.load_base_model`` resolves them to module names.
"""

from __future__ import annotations

import torch
from torch import nn

from hwnas.config.models import BaseModelSpec
from hwnas.errors import ConfigError, excerpt

PRUNABLE = (nn.Conv2d, nn.Linear)


def multiply_accumulates(network: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``image`` (batch included) through the
    convolutions and linear layers: the cost proxy (FLOPs / 2) of the NAS literature."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels * kernel // module.groups
        elif isinstance(module, nn.Linear):  # every token of a sequence pays the layer
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            network(image)
    finally:
        for hook in hooks:
            hook.remove()
    return total


class SmallCNN(nn.Module):
    """Three conv stages and a linear head; stages are what the width knob scales."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        w1, w2, w3 = widths

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.stage1 = nn.Sequential(*block(in_channels, w1), *block(w1, w1), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*block(w1, w2), *block(w2, w2), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(*block(w2, w3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.stage3(self.stage2(self.stage1(x))))

    def stages(self) -> dict[str, nn.Module]:
        return {"stage1": self.stage1, "stage2": self.stage2, "stage3": self.stage3}


def build_builtin(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes)
    raise ConfigError(f"base_model.builtin: unknown model {excerpt(name)}; allowed: small_cnn")


def model_stages(model: nn.Module, spec: BaseModelSpec) -> dict[str, list[nn.Module]]:
    """Stage name -> modules in that stage."""
    if spec.stages is not None:
        named = dict(model.named_modules())
        stages: dict[str, list[nn.Module]] = {}
        for stage, prefixes in spec.stages.items():
            modules = [named[p] for p in prefixes if p in named]
            missing = [p for p in prefixes if p not in named]
            if missing:
                raise ConfigError(f"base_model.stages.{stage}: no module named {excerpt(missing[0])} in "
                                  f"the model; modules are e.g. {', '.join(list(named)[1:8])}")
            stages[stage] = modules
        return stages
    if hasattr(model, "stages"):
        return {name: [module] for name, module in model.stages().items()}
    raise ConfigError("base_model.stages: the model has no stages() method; map stage names to "
                      "module names in the search space, e.g. stages: {stem: [features.0]}")


def output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the class scores: never pruned (a linear head, or a 1x1
    convolution head as in SqueezeNet)."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and m.out_features == num_classes
            or isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.groups == 1]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def output_channels(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in prunable_layers(model).items()}


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held outside torch's layers (a ViT's class token and position embedding, a
    ConvNeXt block's layer scale), with the dimension that follows the channels: the last
    one that is not 1. torch-pruning guesses the same, but says so in a warning each time."""
    found = []
    for module in model.modules():
        if type(module).__module__.startswith("torch.nn"):
            continue  # torch's own layers: torch-pruning knows their weights
        for parameter in module.parameters(recurse=False):
            dims = [d for d, size in enumerate(parameter.shape) if size > 1]
            if dims:
                found.append((parameter, dims[-1]))
    return found


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def run_once(model: nn.Module, example: torch.Tensor) -> object:
    """The model's output on ``example`` (no gradients); a failure is the user's model meeting
    the data's shape, said as such."""
    try:
        with torch.no_grad():
            return model(example)
    except Exception as exc:  # noqa: BLE001 - the user's model, any failure
        raise ConfigError(f"base_model: the model fails on one input of shape "
                          f"{list(example.shape[1:])} (the data set's images after "
                          f"preprocessing): {first_line(exc)}; adapt the model, or "
                          f"dataset.preprocessing (resize, channels)") from None
