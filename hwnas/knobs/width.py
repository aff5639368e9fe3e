"""Width: each convolutional stage keeps a fraction of its channels (pruned locally)."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Annotated, Any, Hashable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from pydantic import Field, model_validator

from hwnas.config.fields import Fraction, Frozen
from hwnas.errors import ConfigError
from hwnas.knobs.base import Knob, ModelParts, Pick, pairs

if TYPE_CHECKING:
    from hwnas.compress.prune import PruneWork, PruningSetup


class KeepRange(Frozen):
    """Every keep ratio from ``low`` to ``high`` in steps of ``step``: an ordered knob (an Optuna
    stepped float), so a sampler can move between ratios it has seen. Channel counts are still
    rounded to the device's channel multiple, so neighbouring ratios may build the same model."""

    low: Fraction
    high: Fraction = 1.0
    step: Annotated[float, Field(gt=0.0, le=1.0)] = 0.0625

    @model_validator(mode="after")
    def _whole_steps(self) -> "KeepRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        steps = (self.high - self.low) / self.step
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"high - low ({self.high - self.low:g}) must be a whole number of "
                             f"steps of {self.step:g}")
        return self

    def values(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 10) for i in range(count + 1)]


class WidthSettings(Frozen):
    """Per-stage fraction of channels kept: a list of choices (``keep_ratios``), or
    ``keep_range`` ({low, high, step}: fine, ordered steps)."""

    keep_ratios: list[Fraction] = [0.25, 0.5, 0.75, 1.0]
    keep_range: KeepRange | None = None
    stages: list[str] | None = None  # default: every convolutional stage of the model
    # module names (or shell patterns such as "*.f.b.0") whose output channels the width knob
    # leaves alone, with their submodules
    exclude: list[str] = []

    @model_validator(mode="after")
    def _one_form(self) -> "WidthSettings":
        if self.keep_range is not None and "keep_ratios" in self.model_fields_set:
            raise ValueError("give either 'keep_ratios' (a list of choices) or 'keep_range' "
                             "({low, high, step}), not both")
        return self

    def ratios(self) -> list[float]:
        """Every keep ratio the knob allows, smallest first."""
        return self.keep_range.values() if self.keep_range is not None \
            else sorted(self.keep_ratios)


def values_of(distribution: BaseDistribution) -> list[float]:
    if isinstance(distribution, CategoricalDistribution):
        return [float(v) for v in distribution.choices]
    assert isinstance(distribution, FloatDistribution) and distribution.step is not None
    count = int(round((distribution.high - distribution.low) / distribution.step))
    return [round(distribution.low + i * distribution.step, 10) for i in range(count + 1)]


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


def _out_channels(layer: Any) -> int | None:
    from torch import nn

    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return None


class Width(Knob):
    name = "width"
    config = WidthSettings
    order = 10
    apply_order = 30
    ladder_role = "rungs"
    advice = ("leave that stage out (knobs.width.stages) or its failing modules "
              "(knobs.width.exclude)")

    def units(self, settings: Any, model: ModelParts) -> dict[str, list[Any]]:
        from hwnas.compress.prune import named_modules, within
        from hwnas.models.transformers import attention_layers

        attention = attention_layers(model.model)
        # width scales convolutional stages; transformer blocks have the heads and mlp knobs
        return {stage: named_modules(model.model, prefixes, f"base_model.stages.{stage}")
                for stage, prefixes in model.stages.items()
                if not any(within(name, prefixes) for name in attention)}

    def excluded(self, settings: Any, model: ModelParts) -> list[Any]:
        from hwnas.compress.prune import named_modules

        return named_modules(model.model, settings.exclude if settings else [],
                             "knobs.width.exclude")

    def shape(self, settings: Any, units: Sequence[str], device: Any
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        if settings is not None and settings.stages is not None:
            unknown = sorted(set(settings.stages) - set(units))
            if unknown:
                raise ConfigError(f"knobs.width.stages: {unknown} are not stages of the model; "
                                  f"allowed: {', '.join(units)}")
        return tuple(units), ()  # every stage has a keep ratio (1 where it is not searched)

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        keep_range = settings.keep_range
        return {f"keep_{stage}": CategoricalDistribution(settings.keep_ratios)
                if keep_range is None else
                FloatDistribution(keep_range.low, keep_range.high, step=keep_range.step)
                for stage in units if settings.stages is None or stage in settings.stages}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable:
        # stepped floats carry binary noise (0.125 + 3 * 0.0625): the ratio is the step's decimal
        return self.normalize({stage: round(float(pick(f"keep_{stage}", 1.0)), 10)
                               for stage in units})

    def neutral(self, units: Sequence[str]) -> Hashable:
        return self.normalize({stage: 1.0 for stage in units})

    def uniform(self, params: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
        """The same keep in every stage, every value the knob allows, largest first (each
        stage at the value it allows nearest)."""
        keeps = sorted({v for dist in params.values() for v in values_of(dist)}, reverse=True)
        return [{name: min(values_of(dist), key=lambda v: abs(v - keep))
                 for name, dist in params.items()} for keep in keeps] or [{}]

    def normalize(self, value: Any) -> Hashable:
        return pairs({stage: float(keep) for stage, keep in dict(value).items()})

    def record(self, value: Any) -> dict[str, Any]:
        return {"keep_ratios": dict(value)}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        return self.normalize(data["keep_ratios"]) if "keep_ratios" in data else None

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        # every stage whole (the knob off, or all kept): nothing to say, as the heads knob
        return f"keep[{' '.join(f'{k}={v:g}' for k, v in value)}]" \
            if self.changes_structure(value) else ""

    def changes_structure(self, value: Any) -> bool:
        return any(keep < 1.0 for _, keep in value)

    def prune(self, work: "PruneWork", value: Any) -> None:
        """torch-pruning's pruning_ratio_dict: each convolutional or linear layer of a stage is
        its own scope (local pruning), with the stage's keep raised per layer to one channel
        multiple."""
        setup = work.setup
        units, excluded = setup.units_of(self.name), setup.excluded.get(self.name, [])
        skip = {id(m) for layer in work.ignored(excluded) for m in layer.modules()}
        ratios: dict[Any, float] = {}
        for stage, keep in value:
            if keep >= 1.0 or stage not in units:
                continue
            for module in work.own(units[stage]):
                for layer in module.modules():
                    channels = _out_channels(layer)
                    if channels and id(layer) not in skip:
                        ratios[layer] = _pruning_ratio(
                            at_least_one_multiple(keep, channels, setup.round_to))
        if ratios:
            work.run_pruner(excluded, pruning_ratio=0.0, pruning_ratio_dict=ratios)

    def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
        if settings is None:
            return self.neutral(units)
        searched = set(settings.stages or units)
        smallest = min(settings.ratios())
        return self.normalize({s: (smallest if s in searched else 1.0) for s in units})

    def alone(self, value: Any) -> list[tuple[str, Hashable]]:
        keep = {stage: 1.0 for stage, _ in value}
        return [(f"knobs.width on stage {stage!r}", self.normalize({**keep, stage: ratio}))
                for stage, ratio in value if ratio < 1.0]

    def check_pruned(self, setup: "PruningSetup", value: Any, pruned: Any) -> str | None:
        stuck = _unchanged_grouped_convs(setup, value, pruned)
        if not stuck:
            return None
        stage, module, groups, channels = stuck[0]
        modules = sorted({m for _, m, _, _ in stuck})
        return (f"grouped conv with groups != channels in layer {module} ({groups} groups, "
                f"{channels} channels, stage {stage!r}): its channels cannot shrink in equal "
                f"groups to a multiple of the device's channel_multiple {setup.round_to}, so the "
                f"width knob does not change it ({len(modules)} such layers); exclude them with "
                f"knobs.width.exclude: {_exclusion(setup.base, modules)}, or leave the stage out "
                f"with knobs.width.stages")


def _unchanged_grouped_convs(setup: "PruningSetup", value: Any, pruned: Any
                             ) -> list[tuple[str, str, int, int]]:
    """(stage, module, groups, channels) of grouped convolutions in stages the width knob
    shrinks whose channels stayed as they were."""
    from torch import nn

    names = {id(m): n for n, m in setup.base.named_modules()}
    after = dict(pruned.named_modules())
    excluded = {id(m) for e in setup.excluded.get("width", []) for m in e.modules()}
    found = []
    for stage, keep in value:
        if keep >= 1.0:
            continue
        for module in setup.units_of("width")[stage]:
            for conv in module.modules():
                if (isinstance(conv, nn.Conv2d) and 1 < conv.groups != conv.out_channels
                        and id(conv) not in excluded
                        and after[names[id(conv)]].out_channels == conv.out_channels):
                    found.append((stage, names[id(conv)], conv.groups, conv.out_channels))
    return found


def _exclusion(model: Any, modules: list[str]) -> list[str]:
    """The shortest exclusion list: one shell pattern when the modules share a name ending
    that nothing else has, else their names."""
    parts = [name.split(".") for name in modules]
    common: list[str] = []
    while all(len(p) > len(common) for p in parts) and len(
            {p[-1 - len(common)] for p in parts}) == 1:
        common.insert(0, parts[0][-1 - len(common)])
    if common and len(modules) > 1:
        pattern = "*." + ".".join(common)
        matched = [n for n, _ in model.named_modules() if fnmatch.fnmatchcase(n, pattern)]
        if sorted(matched) == modules:
            return [pattern]
    return modules
