"""Build the base model's architecture from ``base_model``: builtin, a user factory, or a
torchvision classification model by name (never downloaded: weights come from a local
state_dict or from training here)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from torch import nn

from hwnas.config.models import BaseModelSpec
from hwnas.entry_points import call_entry_point, load_entry_point
from hwnas.errors import ConfigError, excerpt
from hwnas.models import build_builtin

# what the factory may receive besides base_model.kwargs
FACTORY_ARGUMENTS = ("num_classes", "input_shape")


def _factory_arguments(function: Callable[..., Any], spec: BaseModelSpec,
                       input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """num_classes and input_shape where the factory takes them (zero-argument factories keep
    working), plus base_model.kwargs."""
    offered = {"num_classes": num_classes, "input_shape": tuple(input_shape)}
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return dict(spec.kwargs)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    arguments = {name: value for name, value in offered.items()
                 if takes_any or name in parameters}
    arguments.update(spec.kwargs)
    required = [name for name, p in parameters.items()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and name not in arguments]
    if required:
        raise ConfigError(f"base_model.factory {spec.factory} requires {required}; hwnas passes "
                          f"{', '.join(FACTORY_ARGUMENTS)} (where the factory takes them) and "
                          f"base_model.kwargs")
    return arguments


def _torchvision_builder(name: str) -> tuple[Callable[..., nn.Module], bool]:
    """(builder, is_builder_function): a registered classification model or a model class."""
    import torchvision.models as zoo

    names = zoo.list_models(module=zoo)
    if name in names:
        return zoo.get_model_builder(name), True
    cls = getattr(zoo, name, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return cls, False
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"base_model.torchvision: {excerpt(name)} is not a torchvision classification model"
                      f"{hint} (allowed: a name from torchvision.models.list_models(), e.g. "
                      f"resnet18, mobilenet_v2, efficientnet_b0, vit_b_16, or a model class such "
                      f"as VisionTransformer)")


def _adapt_input_channels(model: nn.Module, channels: int) -> str | None:
    """Give the first convolution ``channels`` inputs (e.g. 1 for grayscale images); the model
    is trained here or loaded from weights made for this shape, so nothing is lost."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            if conv.in_channels == channels or conv.groups != 1:
                return None
            new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride,
                            conv.padding, conv.dilation, 1, conv.bias is not None,
                            conv.padding_mode)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            return f"{name}: {conv.in_channels} -> {channels} input channels"
    return None


def build_torchvision(spec: BaseModelSpec, input_shape: tuple[int, ...], num_classes: int,
                      log: Callable[[str], None]) -> nn.Module:
    name = spec.torchvision
    assert name is not None
    kwargs = dict(spec.kwargs)
    if "weights" in kwargs or "pretrained" in kwargs:
        raise ConfigError("base_model.kwargs: hwnas never downloads weights; give a local "
                          "state_dict file as base_model.weights, or train the model with "
                          "base_model.train")
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise ConfigError(f"base_model.kwargs.num_classes is {kwargs['num_classes']} but the data "
                          f"set has {num_classes} classes; leave it out")
    builder, is_function = _torchvision_builder(name)
    if name.startswith("vit_") or name == "VisionTransformer":
        height, width = input_shape[1:]
        if height != width:
            raise ConfigError(f"base_model.torchvision {name}: a VisionTransformer takes square "
                              f"images; the data set gives {height}x{width} (set "
                              f"dataset.preprocessing.resize: [{height}, {height}])")
        kwargs.setdefault("image_size", height)
    try:
        model = builder(weights=None, **kwargs) if is_function else builder(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"base_model: torchvision {name}({', '.join(f'{k}={excerpt(v)}' for k, v in kwargs.items())}) "
                          f"failed: {exc or type(exc).__name__}; check base_model.kwargs") from None
    adapted = _adapt_input_channels(model, input_shape[0])
    if adapted:
        log(f"base model {name}: first convolution {adapted} (the data set's images)")
    return model


def build_model(spec: BaseModelSpec, input_shape: tuple[int, ...], num_classes: int,
                log: Callable[[str], None] = print) -> nn.Module:
    """The architecture as the user knows it, untrained (their weights fit it); the caller
    then splits its attention (``transformers.split_attention``)."""
    if spec.builtin is not None:
        model = build_builtin(spec.builtin, input_shape[0], num_classes)
    elif spec.torchvision is not None:
        model = build_torchvision(spec, input_shape, num_classes, log)
    else:
        assert spec.factory is not None
        arguments = _factory_arguments(load_entry_point(spec.factory, "base_model.factory"),
                                       spec, input_shape, num_classes)
        model = call_entry_point(spec.factory, "base_model.factory", **arguments)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"base_model.factory {spec.factory} returned "
                              f"{type(model).__name__}, not a torch.nn.Module")
    return model
