"""Structured pruning with torch-pruning's dependency graph (never hand-written).

In this order, each step on the result of the last:
- Transformer heads and MLP units: each attention layer keeps a fraction of its heads (whole
  heads: their q/k/v rows and output-projection columns), each MLP a fraction of its hidden
  units; the lowest-ranked go, ranked per layer by torch-pruning's importance of their group.
- Width: each convolutional stage keeps a fraction of its channels (pruned locally).
- Global pruning: a further fraction of all remaining channels, ranked across layers (in a
  vision transformer: MLP units and the embedding width, class token and position embedding
  included; attention is left to the heads knob).
Channels are ranked by the candidate's criterion:
- ``l1``: weight magnitude (L1 norm of the group);
- ``saliency``: first-order Taylor saliency |w * dL/dw| accumulated over calibration batches
  of the task's own labelled data, so what is kept is what matters for this domain.
Channel counts are rounded to the device's multiple (odd counts slow kernels down).

Each step's torch-pruning history (module, direction, removed indices: plain JSON) is the
channel plan: ``replay`` applies it to a freshly built base model to rebuild the pruned
architecture, so a saved state_dict can be loaded into it.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from hwnas.config.models import SearchSpace
from hwnas.errors import ConfigError, excerpt
from hwnas.models import output_layers, unwrapped_parameters
from hwnas.models.transformers import SplitHeadAttention, attention_layers, mlp_layers, sync_dimensions
from hwnas.records import Candidate

MAX_LAYER_PRUNING = 0.9  # never delete a layer outright

# one step of torch-pruning history: (module name, out-channel pruning?, removed indices)
HistoryEntry = tuple[str, bool, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class PruningSetup:
    """What pruning needs from the base model and the search space (built once per search).
    Modules are the base model's own; ``prune`` maps them onto its copy."""

    base: nn.Module
    example_input: torch.Tensor
    width_units: dict[str, list[nn.Module]]  # convolutional stage -> its modules
    head_units: dict[str, list[SplitHeadAttention]]  # stage or layer -> attention layers
    mlp_units: dict[str, list[nn.Linear]]  # stage or MLP -> first linear of each MLP
    protected: list[nn.Module]  # output layers: never pruned
    width_excluded: list[nn.Module]
    global_excluded: list[nn.Module]
    round_to: int


@dataclasses.dataclass(frozen=True)
class PrunedModel:
    module: nn.Module
    history: tuple[tuple[HistoryEntry, ...], ...]  # one tuple per step, in order

    def plan(self) -> list[list[list[Any]]]:
        """The history as JSON."""
        return [[[name, out, list(idxs)] for name, out, idxs in step] for step in self.history]


def _modules(model: nn.Module, names: Sequence[str], key: str) -> list[nn.Module]:
    """Modules by name; a name may be a shell pattern (``*.f.b.0``) matching several."""
    named = dict(model.named_modules())
    found: list[nn.Module] = []
    for pattern in names:
        matches = [named[pattern]] if pattern in named else [
            module for name, module in named.items() if name and fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise ConfigError(f"{key}: no module named {excerpt(pattern)} in the model; modules are "
                              f"e.g. {', '.join(list(named)[1:8])}")
        found += [m for m in matches if all(m is not f for f in found)]
    return found


def _within(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _units(layers: dict[str, nn.Module], stages: dict[str, Sequence[str]], granularity: str
           ) -> dict[str, list[nn.Module]]:
    """Knob unit -> layers: one unit per layer, or per stage (layers outside every stage keep
    a unit of their own)."""
    if granularity == "layer":
        return {name: [layer] for name, layer in layers.items()}
    units: dict[str, list[nn.Module]] = {}
    for name, layer in layers.items():
        stage = next((s for s, prefixes in stages.items() if _within(name, prefixes)), name)
        units.setdefault(stage, []).append(layer)
    return units


def pruning_setup(model: nn.Module, stages: dict[str, Sequence[str]], space: SearchSpace,
                  input_shape: tuple[int, ...], num_classes: int, round_to: int) -> PruningSetup:
    """``stages``: stage name -> module names (``BaseModel.stages``)."""
    attention = attention_layers(model)
    mlps = mlp_layers(model)
    knobs = space.knobs
    width_units = {
        stage: _modules(model, prefixes, f"base_model.stages.{stage}")
        for stage, prefixes in stages.items()
        # width scales convolutional stages; transformer blocks have the heads and mlp knobs
        if not any(_within(name, prefixes) for name in attention)}
    return PruningSetup(
        base=model, example_input=torch.zeros((1, *input_shape)), width_units=width_units,
        head_units=_units(attention, stages, knobs.heads.granularity if knobs.heads else "stage"),
        mlp_units=_units(mlps, stages, knobs.mlp.granularity if knobs.mlp else "stage"),
        protected=output_layers(model, num_classes),
        width_excluded=_modules(model, knobs.width.exclude if knobs.width else [],
                                "knobs.width.exclude"),
        global_excluded=_modules(model, knobs.pruning.exclude if knobs.pruning else [],
                                 "knobs.pruning.exclude"),
        round_to=round_to)


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if criterion == "saliency":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown pruning criterion {criterion!r}; allowed: l1, saliency")


def _accumulate_saliency(model: nn.Module, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Gradients of the task loss on real data, read by TaylorImportance."""
    model.eval()  # frozen BN statistics: saliency of the trained network, not of a batch
    model.zero_grad()
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example, unwrapped_parameters=unwrapped_parameters(model),
        verbose=False)


def _history(graph: tp.DependencyGraph) -> tuple[HistoryEntry, ...]:
    return tuple((name, bool(out), tuple(int(i) for i in idxs))
                 for name, out, idxs in graph.pruning_history())


def _prune_transformer(model: nn.Module, heads: dict[SplitHeadAttention, float],
                       mlps: dict[nn.Linear, float], example: torch.Tensor,
                       importance: tp.importance.Importance, round_to: int
                       ) -> tuple[HistoryEntry, ...]:
    """Remove whole heads and MLP units, lowest importance first, one layer at a time."""
    graph = _graph(model, example)
    for attention, keep in heads.items():
        heads_now = attention.num_heads
        remove = heads_now - kept_heads(heads_now, keep)
        if remove <= 0:
            continue
        width = attention.proj.in_features
        # the group of the attention's inner channels: q/k/v rows and projection columns
        group = graph.get_pruning_group(attention.proj, tp.prune_linear_in_channels,
                                        list(range(width)))
        per_head = importance(group).view(heads_now, -1).mean(1)
        dropped = torch.topk(per_head, remove, largest=False).indices.tolist()
        idxs = [h * attention.head_dim + d for h in sorted(dropped)
                for d in range(attention.head_dim)]
        graph.get_pruning_group(attention.proj, tp.prune_linear_in_channels, idxs).prune()
    for linear, keep in mlps.items():
        units = linear.out_features
        kept = min(units, max(round_to, math.floor(units * keep / round_to + 0.5) * round_to))
        if kept >= units:
            continue
        group = graph.get_pruning_group(linear, tp.prune_linear_out_channels, list(range(units)))
        dropped = torch.topk(importance(group), units - kept, largest=False).indices.tolist()
        graph.get_pruning_group(linear, tp.prune_linear_out_channels, sorted(dropped)).prune()
    return _history(graph)


def _out_channels(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return None


def at_least_one_multiple(keep: float, channels: int, round_to: int) -> float:
    """The keep ratio of one layer, raised so that it keeps at least one channel multiple:
    torch-pruning leaves a layer whose rounded width would be 0 unpruned, so a smaller ratio
    would build a *larger* model. Per layer, so a narrow layer (a squeeze conv) does not hold
    the wide layers of its stage up."""
    if round_to <= 1:
        return keep
    return min(1.0, max(keep, round_to / channels))


def _pruning_ratio(keep: float) -> float:
    """torch-pruning keeps int(C * (1 - ratio)) channels, and 1 - (1 - keep) can fall a hair
    below keep (24 * (1 - (1 - 8/24)) = 7.99...: 7 channels, rounded down to 0 multiples of 8,
    so the layer stays whole). The margin only absorbs that binary noise (C * 1e-9 << 1)."""
    return max(0.0, 1.0 - keep - 1e-9)


def _width_ratios(setup: PruningSetup, keep_ratios: Sequence[tuple[str, float]],
                  own: Any, ignored: Sequence[nn.Module]) -> dict[nn.Module, float]:
    """torch-pruning's pruning_ratio_dict for the width knob: each convolutional or linear layer
    of a stage is its own scope (local pruning), with the stage's keep raised per layer to one
    channel multiple."""
    skip = {id(m) for layer in ignored for m in layer.modules()}
    ratios: dict[nn.Module, float] = {}
    for stage, keep in keep_ratios:
        if keep >= 1.0 or stage not in setup.width_units:
            continue
        for module in own(setup.width_units[stage]):
            for layer in module.modules():
                channels = _out_channels(layer)
                if channels and id(layer) not in skip:
                    ratios[layer] = _pruning_ratio(
                        at_least_one_multiple(keep, channels, setup.round_to))
    return ratios


def prune(setup: PruningSetup, candidate: Candidate,
          saliency_batches: list[tuple[np.ndarray, np.ndarray]]) -> PrunedModel:
    """A pruned copy of the base model, with the channel plan that rebuilds it."""
    memo: dict[int, object] = {}
    pruned = copy.deepcopy(setup.base, memo)

    def own(modules: Sequence[nn.Module]) -> list[Any]:
        return [memo[id(m)] for m in modules]

    criterion = candidate.pruning_criterion
    importance = _importance(criterion)
    pruned.eval()
    history: list[tuple[HistoryEntry, ...]] = []

    heads = {layer: keep for unit, keep in candidate.head_keep_ratios if keep < 1.0
             for layer in own(setup.head_units.get(unit, []))}
    mlps = {layer: keep for unit, keep in candidate.mlp_keep_ratios if keep < 1.0
            for layer in own(setup.mlp_units.get(unit, []))}
    if heads or mlps:
        if criterion == "saliency":
            _accumulate_saliency(pruned, saliency_batches)
        history.append(_prune_transformer(pruned, heads, mlps, setup.example_input, importance,
                                          setup.round_to))
        sync_dimensions(pruned)

    # attention inner widths change only by whole heads (the heads knob), never channel-wise
    attention_inputs = [layer.qkv for layer in attention_layers(pruned).values()]
    ratios = _width_ratios(setup, candidate.keep_ratios, own,
                           own(setup.protected) + own(setup.width_excluded) + attention_inputs)
    steps = []
    if ratios:
        steps.append((dict(pruning_ratio=0.0, pruning_ratio_dict=ratios), setup.width_excluded))
    if candidate.global_pruning_ratio > 0:
        steps.append((dict(pruning_ratio=candidate.global_pruning_ratio, global_pruning=True),
                      setup.global_excluded))
    for options, excluded in steps:
        if criterion == "saliency":
            _accumulate_saliency(pruned, saliency_batches)
        pruner = tp.pruner.MetaPruner(
            pruned, setup.example_input, importance=importance,
            ignored_layers=own(setup.protected) + own(excluded) + attention_inputs,
            unwrapped_parameters=unwrapped_parameters(pruned), round_to=setup.round_to,
            max_pruning_ratio=MAX_LAYER_PRUNING, **options)
        pruner.step()
        history.append(_history(pruner.DG))
        sync_dimensions(pruned)
        pruned.zero_grad(set_to_none=True)
    for parameter in pruned.parameters():
        parameter.grad = None
    return PrunedModel(pruned, tuple(history))


def replay(model: nn.Module, history: Sequence[Sequence[Sequence[Any]]],
           example_input: torch.Tensor) -> nn.Module:
    """Apply a channel plan (``PrunedModel.plan()``) to a freshly built base model, in place."""
    model.eval()
    for step in history:
        graph = _graph(model, example_input)
        graph.load_pruning_history([[name, bool(out), list(idxs)] for name, out, idxs in step])
        sync_dimensions(model)
    return model


def kept_heads(heads: int, keep: float) -> int:
    """How many of ``heads`` a keep ratio leaves (at least one)."""
    return max(1, min(heads, int(math.floor(heads * keep + 0.5))))
