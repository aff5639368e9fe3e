"""Default stages of a model without a stage map: what the width knob scales, per stage.

- Transformers: one stage per block holding an attention layer (``encoder_layer_0``...).
- CNNs: find the body (descend while one child holds most of the convolutions: torchvision's
  ``features``, ``trunk_output``, or the model itself for ResNet), then group its consecutive
  children by the resolution of their output feature map (ResNet: ``layer1``..``layer4``;
  MobileNetV2: ``features.2-3``, ``features.4-6``...). Stages whose channels torch-pruning
  couples (a stem feeding an identity residual) are merged: one knob per set of channels.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from hwnas.models import run_once, unwrapped_parameters
from hwnas.models.transformers import attention_layers
from hwnas.models.unsupported import unsupported_module

BODY_SHARE = 0.75  # a child holding this share of the convolutions is the body


def _convs(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def _body(model: nn.Module) -> tuple[str, nn.Module]:
    path, body = "", model
    while True:
        total = _convs(body)
        dominant = [(name, child) for name, child in body.named_children()
                    if total and _convs(child) >= BODY_SHARE * total
                    and len(list(child.children())) > 1]
        if not dominant:
            return path, body
        name, body = dominant[0]
        path = f"{path}.{name}" if path else name


def _resolutions(model: nn.Module, body: nn.Module, input_shape: tuple[int, ...]
                 ) -> dict[str, tuple[int, ...]]:
    """Child name -> spatial size of its output, from one forward pass."""
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [child.register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(
            name, tuple(out.shape[2:]) if isinstance(out, torch.Tensor) and out.dim() == 4 else ()))
        for name, child in body.named_children()]
    try:
        was_training = model.training
        model.eval()
        run_once(model, torch.zeros((1, *input_shape)))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def _name(path: str, children: list[str]) -> str:
    first, last = children[0], children[-1]
    label = first if first == last else f"{first}-{last}"
    return f"{path}.{label}" if path else label


def _merge_coupled(model: nn.Module, stages: list[list[str]], input_shape: tuple[int, ...]
                   ) -> list[list[str]]:
    """Union stages whose output channels fall in one torch-pruning group."""
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros((1, *input_shape)),
        unwrapped_parameters=unwrapped_parameters(model), verbose=False)
    owner: dict[nn.Module, int] = {}
    for index, prefixes in enumerate(stages):
        for prefix in prefixes:
            for module in model.get_submodule(prefix).modules():
                owner[module] = index
    parent = list(range(len(stages)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for index, prefixes in enumerate(stages):
        for prefix in prefixes:
            for conv in model.get_submodule(prefix).modules():
                if not isinstance(conv, nn.Conv2d) or conv.groups == conv.out_channels > 1:
                    continue
                group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
                for dep, _ in group:
                    target = dep.target.module
                    other = owner.get(target)
                    # a norm layer follows whatever feeds it; only layers with their own
                    # output channels tie two stages together
                    if (other is not None and isinstance(target, (nn.Conv2d, nn.Linear))
                            and graph.is_out_channel_pruning_fn(dep.handler)):
                        parent[find(other)] = find(index)
    merged: dict[int, list[str]] = {}
    for index, prefixes in enumerate(stages):
        merged.setdefault(find(index), []).extend(prefixes)
    return list(merged.values())


def default_stages(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, list[str]]:
    """Stage name -> module names, found from the model's structure (see module docstring)."""
    attention = attention_layers(model)
    if attention:
        blocks = [name.rpartition(".")[0] for name in attention]
        return {block.rpartition(".")[2] or block: [block] for block in blocks if block}
    path, body = _body(model)
    sizes = _resolutions(model, body, input_shape)
    groups: list[list[str]] = []
    last_size: tuple[int, ...] | None = None
    for name, child in body.named_children():
        if _convs(child) == 0:
            continue  # pooling, activations: they carry no channels of their own
        size = sizes.get(name)
        if size is None:
            continue  # not run in forward (e.g. an auxiliary classifier)
        if groups and size == last_size:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_size = size
    prefixed = [[f"{path}.{name}" if path else name for name in group] for group in groups]
    # torch-pruning cannot trace some architectures (it would hang here); the search refuses
    # to prune them anyway
    traceable = unsupported_module(model) is None
    merged = _merge_coupled(model, prefixed, input_shape) if len(prefixed) > 1 and traceable \
        else prefixed
    stages: dict[str, list[str]] = {}
    for prefixes in merged:
        names = [p[len(path) + 1:] if path else p for p in prefixes]
        stages[_name(path, [names[0], names[-1]])] = prefixes
    return stages
