"""Global pruning and the criterion: a further fraction of all remaining channels, ranked
across layers (in a vision transformer: MLP units and the embedding width, class token and
position embedding included; attention is left to the heads knob). The criterion ranks the
channels, heads and units of every structural knob: ``l1`` (weight magnitude) or
``saliency`` (first-order Taylor saliency on the task's own labelled data)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Hashable, Literal, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution
from pydantic import Field

from hwnas.config.fields import Frozen
from hwnas.knobs.base import Knob, ModelParts, Pick, registered

if TYPE_CHECKING:
    from hwnas.compress.prune import PruneWork


class PruningSettings(Frozen):
    criteria: list[Literal["l1", "saliency"]] = ["l1", "saliency"]
    global_ratios: list[Annotated[float, Field(ge=0.0, le=0.9)]] = [0.0, 0.1, 0.2, 0.3]
    saliency_batches: Annotated[int, Field(ge=1, le=100)] = 4
    # module names or patterns whose output channels global pruning leaves alone
    exclude: list[str] = []


class Pruning(Knob):
    """Its value: (criterion, global ratio)."""

    name = "pruning"
    config = PruningSettings
    order = 60
    apply_order = 40
    advice = "set knobs.pruning: null, or exclude modules with knobs.pruning.exclude"

    def excluded(self, settings: Any, model: ModelParts) -> list[Any]:
        from hwnas.compress.prune import named_modules

        return named_modules(model.model, settings.exclude if settings else [],
                             "knobs.pruning.exclude")

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {"pruning_criterion": CategoricalDistribution(settings.criteria),
                "global_pruning_ratio": CategoricalDistribution(settings.global_ratios)}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable:
        return self.normalize((pick("pruning_criterion", "l1"),
                               pick("global_pruning_ratio", 0.0)))

    def neutral(self, units: Sequence[str]) -> Hashable:
        return ("l1", 0.0)

    def least_destructive(self, params: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        found = super().least_destructive(params)
        if "global_pruning_ratio" in params:
            ratios = params["global_pruning_ratio"].choices  # type: ignore[attr-defined]
            found["global_pruning_ratio"] = min(ratios)  # none pruned globally
        return found

    def normalize(self, value: Any) -> Hashable:
        criterion, ratio = value
        return (str(criterion), float(ratio))

    def record(self, value: Any) -> dict[str, Any]:
        return {"pruning_criterion": value[0], "global_pruning_ratio": value[1]}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        if "pruning_criterion" not in data:
            return None
        return self.normalize((data["pruning_criterion"], data["global_pruning_ratio"]))

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        # the criterion only says something where some knob prunes
        if not any(each.changes_structure(values[each.name]) for each in registered()
                   if each.name in values):
            return ""
        return f"{value[0]} global={value[1]:g}" if value[1] > 0 else value[0]

    def changes_structure(self, value: Any) -> bool:
        return value[1] > 0

    def prune(self, work: "PruneWork", value: Any) -> None:
        if value[1] > 0:
            work.run_pruner(work.setup.excluded.get(self.name, []), pruning_ratio=value[1],
                            global_pruning=True)

    def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
        return ("l1", max(settings.global_ratios)) if settings is not None else ("l1", 0.0)

    def alone(self, value: Any) -> list[tuple[str, Hashable]]:
        return [(f"knobs.pruning (global ratio {value[1]:g})", ("l1", value[1]))] \
            if value[1] > 0 else []
