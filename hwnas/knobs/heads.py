"""Attention heads: each attention layer keeps a fraction of its heads (whole heads: their
q/k/v rows and output-projection columns; at least one), the lowest-ranked going first.
Applies to vision transformers (torchvision ViT encoder blocks)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Hashable, Literal, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution

from hwnas.config.fields import Fraction, Frozen
from hwnas.knobs.base import Knob, ModelParts, Pick, pairs

if TYPE_CHECKING:
    from hwnas.compress.prune import PruneWork


class HeadsSettings(Frozen):
    """Attention heads kept, as a fraction of each attention layer's heads (at least one is
    kept); one value per stage, or per attention layer. Applies to vision transformers."""

    keep_ratios: list[Fraction] = [0.5, 0.75, 1.0]
    granularity: Literal["stage", "layer"] = "stage"


def kept_heads(heads: int, keep: float) -> int:
    """How many of ``heads`` a keep ratio leaves (at least one)."""
    return max(1, min(heads, int(math.floor(heads * keep + 0.5))))


class UnitKeep(Knob):
    """A keep ratio per unit (stage or layer) of transformer layers, searched as
    ``<prefix>_<unit>``; shared by the heads and MLP knobs."""

    prefix: str
    record_key: str
    order = 40
    apply_order = 10

    def layers(self, model: Any) -> dict[str, Any]:
        raise NotImplementedError

    def units(self, settings: Any, model: ModelParts) -> dict[str, list[Any]]:
        from hwnas.compress.prune import grouped_units

        return grouped_units(self.layers(model.model), model.stages,
                             settings.granularity if settings else "stage")

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {f"{self.prefix}_{unit}": CategoricalDistribution(settings.keep_ratios)
                for unit in units}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable:
        return self.normalize({unit: pick(f"{self.prefix}_{unit}", 1.0) for unit in units})

    def neutral(self, units: Sequence[str]) -> Hashable:
        return ()

    def least_destructive(self, params: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        # every unit whole
        return {name: max(dist.choices)  # type: ignore[attr-defined]
                for name, dist in params.items()}

    def normalize(self, value: Any) -> Hashable:
        return pairs({unit: float(keep) for unit, keep in dict(value).items()})

    def record(self, value: Any) -> dict[str, Any]:
        return {self.record_key: dict(value)} if value else {}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        # stored before this knob existed, or with every unit whole: nothing pruned
        return self.normalize(data.get(self.record_key) or {})

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return f"{self.prefix}[{' '.join(f'{k}={v:g}' for k, v in value)}]" if value else ""

    def changes_structure(self, value: Any) -> bool:
        return any(keep < 1.0 for _, keep in value)

    def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
        return self.normalize({u: min(settings.keep_ratios) for u in units}) if settings else ()

    def alone(self, value: Any) -> list[tuple[str, Hashable]]:
        return [(f"knobs.{self.name} on {unit!r}", self.normalize({unit: ratio}))
                for unit, ratio in value if ratio < 1.0]

    def layers_to_prune(self, work: "PruneWork", value: Any) -> dict[Any, float]:
        units = work.setup.units_of(self.name)
        return {layer: keep for unit, keep in value if keep < 1.0
                for layer in work.own(units.get(unit, []))}


class Heads(UnitKeep):
    name = "heads"
    config = HeadsSettings
    prefix = "heads"
    record_key = "head_keep_ratios"
    order = 40
    apply_order = 10

    def layers(self, model: Any) -> dict[str, Any]:
        from hwnas.models.transformers import attention_layers

        return attention_layers(model)

    def prune(self, work: "PruneWork", value: Any) -> None:
        """Remove whole heads, lowest importance first, one layer at a time."""
        import torch
        import torch_pruning as tp

        layers = self.layers_to_prune(work, value)
        if not layers:
            return
        graph = work.graph()
        for attention, keep in layers.items():
            heads_now = attention.num_heads
            remove = heads_now - kept_heads(heads_now, keep)
            if remove <= 0:
                continue
            width = attention.proj.in_features
            # the group of the attention's inner channels: q/k/v rows and projection columns
            group = graph.get_pruning_group(attention.proj, tp.prune_linear_in_channels,
                                            list(range(width)))
            per_head = work.importance(group).view(heads_now, -1).mean(1)
            dropped = torch.topk(per_head, remove, largest=False).indices.tolist()
            idxs = [h * attention.head_dim + d for h in sorted(dropped)
                    for d in range(attention.head_dim)]
            graph.get_pruning_group(attention.proj, tp.prune_linear_in_channels, idxs).prune()
