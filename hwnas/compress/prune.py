"""Structured pruning with torch-pruning's dependency graph (never hand-written): the shared
machinery each structural knob (hwnas/knobs) applies its change through.

A candidate is applied to a copy of the base model knob by knob, in their ``apply_order``:
heads and MLP units (whole heads: q/k/v rows and output-projection columns; ranked per layer
by torch-pruning's importance of their group), then width (each convolutional stage keeps a
fraction of its channels, pruned locally), then global pruning (a further fraction of all
remaining channels, ranked across layers). Channels are ranked by the candidate's criterion:
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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from hwnas.config.models import SearchSpace
from hwnas.errors import ConfigError, excerpt
from hwnas.knobs.base import ModelParts, registered
from hwnas.knobs.candidate import Candidate
from hwnas.models import output_layers, unwrapped_parameters
from hwnas.models.transformers import attention_layers, sync_dimensions
from hwnas.torch_device import batch_on, is_cpu

MAX_LAYER_PRUNING = 0.9  # never delete a layer outright

# one step of torch-pruning history: (module name, out-channel pruning?, removed indices)
HistoryEntry = tuple[str, bool, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class PruningSetup:
    """What pruning needs from the base model and the search space (built once per search).
    Modules are the base model's own; ``PruneWork.own`` maps them onto its copy."""

    base: nn.Module
    example_input: torch.Tensor
    units: Mapping[str, Mapping[str, Any]]  # knob -> unit -> what it acts on (hwnas/knobs)
    protected: list[nn.Module]  # output layers: never pruned
    excluded: Mapping[str, list[nn.Module]]  # knob -> modules it leaves alone
    round_to: int

    def units_of(self, knob: str) -> Mapping[str, Any]:
        return self.units.get(knob, {})


@dataclasses.dataclass(frozen=True)
class PrunedModel:
    module: nn.Module
    history: tuple[tuple[HistoryEntry, ...], ...]  # one tuple per step, in order

    def plan(self) -> list[list[list[Any]]]:
        """The history as JSON."""
        return [[[name, out, list(idxs)] for name, out, idxs in step] for step in self.history]


def named_modules(model: nn.Module, names: Sequence[str], key: str) -> list[nn.Module]:
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


def within(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def grouped_units(layers: dict[str, nn.Module], stages: Mapping[str, Sequence[str]],
                  granularity: str) -> dict[str, list[nn.Module]]:
    """Knob unit -> layers: one unit per layer, or per stage (layers outside every stage keep
    a unit of their own)."""
    if granularity == "layer":
        return {name: [layer] for name, layer in layers.items()}
    units: dict[str, list[nn.Module]] = {}
    for name, layer in layers.items():
        stage = next((s for s, prefixes in stages.items() if within(name, prefixes)), name)
        units.setdefault(stage, []).append(layer)
    return units


def pruning_setup(model: nn.Module, stages: Mapping[str, Sequence[str]], space: SearchSpace,
                  input_shape: tuple[int, ...], num_classes: int, round_to: int) -> PruningSetup:
    """``stages``: stage name -> module names (``BaseModel.stages``). Each knob names its
    units and exclusions in this model."""
    parts = ModelParts(model, stages, num_classes, round_to)
    units: dict[str, Mapping[str, Any]] = {}
    excluded: dict[str, list[nn.Module]] = {}
    for knob in registered("vision"):
        settings = knob.settings(space.knobs)
        units[knob.name] = knob.units(settings, parts)
        excluded[knob.name] = knob.excluded(settings, parts)
    return PruningSetup(base=model, example_input=torch.zeros((1, *input_shape)), units=units,
                        protected=output_layers(model, num_classes), excluded=excluded,
                        round_to=round_to)


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if criterion == "saliency":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown pruning criterion {criterion!r}; allowed: l1, saliency")


def _accumulate_saliency(model: nn.Module, batches: list[tuple[np.ndarray, np.ndarray]],
                         device: torch.device | str = "cpu") -> None:
    """Gradients of the task loss on real data, read by TaylorImportance; taken on ``device``,
    the model and its gradients back on the CPU (where torch-pruning prunes) after."""
    model.eval()  # frozen BN statistics: saliency of the trained network, not of a batch
    model.zero_grad()
    loss_fn = nn.CrossEntropyLoss()
    if not is_cpu(device):
        model.to(device)
    try:
        for x, y in batches:
            loss_fn(model(batch_on(x, device)), batch_on(y, device)).backward()
    finally:
        if not is_cpu(device):
            model.to("cpu")


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example, unwrapped_parameters=unwrapped_parameters(model),
        verbose=False)


def _history(graph: tp.DependencyGraph) -> tuple[HistoryEntry, ...]:
    return tuple((name, bool(out), tuple(int(i) for i in idxs))
                 for name, out, idxs in graph.pruning_history())


class PruneWork:
    """One candidate being applied to a copy of the base model: what the knobs share."""

    def __init__(self, setup: PruningSetup, criterion: str,
                 saliency_batches: list[tuple[np.ndarray, np.ndarray]],
                 device: torch.device | str = "cpu") -> None:
        self.setup, self.criterion, self.saliency_batches = setup, criterion, saliency_batches
        self.device = device  # where saliency's gradients are taken
        self.importance = _importance(criterion)
        self._memo: dict[int, object] = {}
        self.model: nn.Module = copy.deepcopy(setup.base, self._memo)
        self.model.eval()
        self.history: list[tuple[HistoryEntry, ...]] = []
        self._open: tp.DependencyGraph | None = None

    def own(self, modules: Sequence[nn.Module]) -> list[Any]:
        """The copy's modules for the base model's."""
        return [self._memo[id(m)] for m in modules]

    def graph(self) -> tp.DependencyGraph:
        """The dependency graph of the model as it is, for knobs that prune groups themselves
        (whole heads, MLP units); what they prune on it is one step of the plan."""
        if self._open is None:
            if self.criterion == "saliency":
                _accumulate_saliency(self.model, self.saliency_batches, self.device)
            self._open = _graph(self.model, self.setup.example_input)
        return self._open

    def close(self) -> None:
        """End the open graph's step: its history joins the plan."""
        if self._open is not None:
            self.history.append(_history(self._open))
            self._open = None
            sync_dimensions(self.model)

    def ignored(self, excluded: Sequence[nn.Module]) -> list[nn.Module]:
        """Layers a channel-wise step leaves alone: the output layers, ``excluded`` (base
        model modules) and attention inputs (they change only by whole heads)."""
        self.close()
        return self.own(self.setup.protected) + self.own(excluded) + [
            layer.qkv for layer in attention_layers(self.model).values()]

    def run_pruner(self, excluded: Sequence[nn.Module], **options: Any) -> None:
        """One torch-pruning MetaPruner step (``options``: its ratios) as one plan step."""
        ignored = self.ignored(excluded)
        if self.criterion == "saliency":
            _accumulate_saliency(self.model, self.saliency_batches, self.device)
        pruner = tp.pruner.MetaPruner(
            self.model, self.setup.example_input, importance=self.importance,
            ignored_layers=ignored, unwrapped_parameters=unwrapped_parameters(self.model),
            round_to=self.setup.round_to, max_pruning_ratio=MAX_LAYER_PRUNING, **options)
        pruner.step()
        self.history.append(_history(pruner.DG))
        sync_dimensions(self.model)
        self.model.zero_grad(set_to_none=True)

    def finish(self) -> PrunedModel:
        self.close()
        for parameter in self.model.parameters():
            parameter.grad = None
        return PrunedModel(self.model, tuple(self.history))


def prune(setup: PruningSetup, candidate: Candidate,
          saliency_batches: list[tuple[np.ndarray, np.ndarray]],
          device: torch.device | str = "cpu") -> PrunedModel:
    """A pruned copy of the base model, with the channel plan that rebuilds it."""
    work = PruneWork(setup, candidate.pruning_criterion, saliency_batches, device)
    values = dict(candidate.values)
    for knob in sorted(registered("vision"), key=lambda k: k.apply_order):
        if knob.name in values:
            knob.prune(work, values[knob.name])
    return work.finish()


def replay(model: nn.Module, history: Sequence[Sequence[Sequence[Any]]],
           example_input: torch.Tensor) -> nn.Module:
    """Apply a channel plan (``PrunedModel.plan()``) to a freshly built base model, in place."""
    model.eval()
    for step in history:
        graph = _graph(model, example_input)
        graph.load_pruning_history([[name, bool(out), list(idxs)] for name, out, idxs in step])
        sync_dimensions(model)
    return model
