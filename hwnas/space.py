"""Define-by-run search space: (Optuna trial, SearchSpace) -> Candidate, each registered knob
(hwnas/knobs) suggesting its own parameters."""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError, excerpt
from hwnas.knobs import Candidate, Knob, registered


@dataclasses.dataclass(frozen=True)
class SpaceShape:
    """What the base model and device allow: the units each knob ranges over, and the choices
    the device allows it (the precision knob: the device's precisions)."""

    units: tuple[tuple[str, tuple[str, ...]], ...]  # knob -> its units
    choices: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # knob -> choices the device allows

    def units_of(self, knob: str) -> tuple[str, ...]:
        return dict(self.units).get(knob, ())

    def choices_of(self, knob: str) -> tuple[Any, ...]:
        return dict(self.choices).get(knob, ())

    # the built-in knobs' units, by the names the trial pipeline reads
    @property
    def stages(self) -> tuple[str, ...]:  # what the width knob scales (convolutional stages)
        return self.units_of("width")

    @property
    def precision_units(self) -> tuple[str, ...]:
        return self.units_of("precision")

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.choices_of("precision") or ("fp32",)

    @property
    def head_units(self) -> tuple[str, ...]:
        return self.units_of("heads")

    @property
    def mlp_units(self) -> tuple[str, ...]:
        return self.units_of("mlp")


def space_shape(space: SearchSpace, device: DeviceProfile,
                units: Mapping[str, Sequence[str]]) -> SpaceShape:
    """Check the search space against the model (``units``: knob -> the units it found in the
    model, ``PruningSetup.units``) and the device; name what is wrong."""
    found, choices = [], []
    for knob in registered(space.family):
        knob_units, knob_choices = knob.shape(knob.settings(space.knobs),
                                              tuple(units.get(knob.name, ())), device)
        found.append((knob.name, knob_units))
        choices.append((knob.name, knob_choices))
    return SpaceShape(tuple(found), tuple(choices))


def knob_distributions(space: SearchSpace, shape: SpaceShape
                       ) -> list[tuple[Knob, dict[str, BaseDistribution]]]:
    """Each knob that is on, with its Optuna parameters."""
    found = []
    for knob in registered(space.family):
        settings = knob.settings(space.knobs)
        if settings is not None:
            found.append((knob, knob.distributions(settings, shape.units_of(knob.name),
                                                   shape.choices_of(knob.name))))
    return found


def distributions(space: SearchSpace, shape: SpaceShape) -> dict[str, BaseDistribution]:
    """Every Optuna parameter of this space and its choices: what suggest() asks for, and what
    a trial of another study must fit to be kept as history. A width ``keep_range`` is an
    ordered (stepped float) parameter; every other knob is categorical."""
    return {name: dist for _knob, params in knob_distributions(space, shape)
            for name, dist in params.items()}


def uniform_ladders(space: SearchSpace, shape: SpaceShape) -> list[list[dict[str, Any]]]:
    """The engine's uniform models, as Optuna parameters: each knob says what "cheaper" means
    for it (hwnas/knobs base.py ``ladder_role``). With the built-in knobs: the same keep
    ratio in every stage (largest first) down each ladder, one ladder per precision of the
    device (one precision for the whole model), the other knobs at their least destructive
    choice (no global pruning, every head and MLP unit kept, the first criterion and
    calibration)."""
    fixed: dict[str, Any] = {}
    rungs: list[dict[str, Any]] = [{}]
    ladders: list[dict[str, Any]] = [{}]
    for knob, params in knob_distributions(space, shape):
        if not params:
            continue
        if knob.ladder_role == "rungs":
            rungs = [rung | step for rung in rungs for step in knob.uniform(params)]
        elif knob.ladder_role == "ladders":
            ladders = [ladder | step for ladder in ladders for step in knob.uniform(params)]
        else:
            fixed |= knob.least_destructive(params)
    return [[fixed | ladder | rung for rung in rungs] for ladder in ladders]


def check_enqueued(space: SearchSpace, shape: SpaceShape) -> None:
    """Every enqueued parameter is one of the space's, with a value it allows: Optuna would
    otherwise replace an off-grid value (keep 0.38 on a 1/16 grid) by a sampled one, warning
    only in the log."""
    found = distributions(space, shape)
    for index, params in enumerate(space.search.enqueue):
        unknown = sorted(set(params) - set(found))
        if unknown:
            raise ConfigError(f"search.enqueue.{index}: unknown parameter(s) {unknown}; "
                              f"allowed: {', '.join(sorted(found))}")
        for name, value in params.items():
            if not fits(found[name], value):
                raise ConfigError(f"search.enqueue.{index}.{name}: {excerpt(value)} is not in the "
                                  f"space; allowed: {describe(found[name])}")


def describe(distribution: BaseDistribution) -> str:
    """The values a distribution allows, in the configuration's words."""
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        return (f"{distribution.low:g} to {distribution.high:g} in steps of "
                f"{distribution.step:g}")
    if isinstance(distribution, CategoricalDistribution):
        return ", ".join(str(choice) for choice in distribution.choices)
    return repr(distribution)


def fits(distribution: BaseDistribution, value: object) -> bool:
    """Whether a stored parameter value is one of the distribution's choices (or grid steps)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def suggest_parameter(trial: optuna.trial.BaseTrial, name: str,
                      distribution: BaseDistribution) -> float | str:
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high,
                                   step=distribution.step, log=distribution.log)
    assert isinstance(distribution, CategoricalDistribution)
    return trial.suggest_categorical(name, list(distribution.choices))  # type: ignore[arg-type]


def suggest(trial: optuna.trial.BaseTrial, space: SearchSpace, shape: SpaceShape) -> Candidate:
    found = distributions(space, shape)

    def pick(name: str, default: Any) -> Any:
        return suggest_parameter(trial, name, found[name]) if name in found else default

    chosen: dict[str, Hashable] = {}
    for knob in registered(space.family):
        value = knob.suggest(pick, knob.settings(space.knobs), shape.units_of(knob.name), chosen)
        if value is not None:
            chosen[knob.name] = value
    return Candidate.of(chosen)

