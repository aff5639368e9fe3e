"""MLP units: each transformer block's MLP keeps a fraction of its hidden units (rounded to
the device's channel multiple), the lowest-ranked going first. Applies to vision
transformers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from hwnas.config.fields import Fraction, Frozen
from hwnas.knobs.heads import UnitKeep

if TYPE_CHECKING:
    from hwnas.compress.prune import PruneWork


class MlpSettings(Frozen):
    """Hidden units kept in each transformer block's MLP (rounded to the device's channel
    multiple); one value per stage, or per MLP. Applies to vision transformers."""

    keep_ratios: list[Fraction] = [0.5, 0.75, 1.0]
    granularity: Literal["stage", "layer"] = "stage"


class Mlp(UnitKeep):
    name = "mlp"
    config = MlpSettings
    prefix = "mlp"
    record_key = "mlp_keep_ratios"
    order = 50
    apply_order = 20  # after heads, on the same dependency graph (one step of the plan)

    def layers(self, model: Any) -> dict[str, Any]:
        from hwnas.models.transformers import mlp_layers

        return mlp_layers(model)

    def prune(self, work: "PruneWork", value: Any) -> None:
        import torch
        import torch_pruning as tp

        layers = self.layers_to_prune(work, value)
        if not layers:
            return
        graph, round_to = work.graph(), work.setup.round_to
        for linear, keep in layers.items():
            units = linear.out_features
            kept = min(units, max(round_to, math.floor(units * keep / round_to + 0.5) * round_to))
            if kept >= units:
                continue
            group = graph.get_pruning_group(linear, tp.prune_linear_out_channels,
                                            list(range(units)))
            dropped = torch.topk(work.importance(group), units - kept,
                                 largest=False).indices.tolist()
            graph.get_pruning_group(linear, tp.prune_linear_out_channels, sorted(dropped)).prune()
