"""Width and global pruning with torch-pruning's dependency graph (never hand-written).

Width: each stage keeps a fraction of its channels (the stage's layers pruned locally).
Global pruning: then a further fraction of all remaining channels is removed by ranking
channels across layers. Both rank channels by the candidate's criterion:
- ``l1``: weight magnitude (L1 norm of the group);
- ``saliency``: first-order Taylor saliency |w * dL/dw| accumulated over calibration batches
  of the task's own labelled data, so what is kept is what matters for this domain.
Channel counts are rounded to the device's multiple (odd counts slow kernels down).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from hwnas.records import Candidate

MAX_LAYER_PRUNING = 0.9  # never delete a layer outright


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if criterion == "saliency":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown pruning criterion {criterion!r}; allowed: l1, saliency")


def _accumulate_saliency(model: nn.Module, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Gradients of the task loss on real data, read by TaylorImportance at step()."""
    model.eval()  # frozen BN statistics: saliency of the trained network, not of a batch
    model.zero_grad()
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()


def prune_model(model: nn.Module, candidate: Candidate, stages: dict[str, list[nn.Module]],
                example_input: torch.Tensor, ignored_layers: list[nn.Module], round_to: int,
                saliency_batches: list[tuple[np.ndarray, np.ndarray]]) -> nn.Module:
    """A pruned copy of ``model``; ``stages``/``ignored_layers`` refer to ``model``'s modules."""
    memo: dict[int, object] = {}
    pruned = copy.deepcopy(model, memo)
    own = {id(m): memo[id(m)] for m in model.modules() if id(m) in memo}
    stage_modules = {name: [own[id(m)] for m in mods] for name, mods in stages.items()}
    ignored = [own[id(m)] for m in ignored_layers]
    criterion = candidate.pruning_criterion
    pruned.eval()

    ratios = {tuple(stage_modules[name]) if len(stage_modules[name]) > 1 else stage_modules[name][0]:
              1.0 - keep for name, keep in candidate.keep_ratios if keep < 1.0}
    steps = []
    if ratios:
        steps.append(dict(pruning_ratio=0.0, pruning_ratio_dict=ratios))
    if candidate.global_pruning_ratio > 0:
        steps.append(dict(pruning_ratio=candidate.global_pruning_ratio, global_pruning=True))
    for options in steps:
        if criterion == "saliency":
            _accumulate_saliency(pruned, saliency_batches)
        pruner = tp.pruner.MetaPruner(
            pruned, example_input, importance=_importance(criterion), ignored_layers=ignored,
            round_to=round_to, max_pruning_ratio=MAX_LAYER_PRUNING, **options)
        pruner.step()
        pruned.zero_grad(set_to_none=True)
    for parameter in pruned.parameters():
        parameter.grad = None
    return pruned
