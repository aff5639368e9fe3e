"""Define-by-run search space: (Optuna trial, SearchSpace) -> Candidate."""

from __future__ import annotations

import dataclasses

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError, excerpt
from hwnas.records import Candidate


@dataclasses.dataclass(frozen=True)
class SpaceShape:
    """What the base model and device allow: the names the knobs range over."""

    stages: tuple[str, ...]  # what the width knob scales (convolutional stages)
    precision_units: tuple[str, ...]
    precisions: tuple[str, ...]
    head_units: tuple[str, ...] = ()  # transformers: what the heads knob ranges over
    mlp_units: tuple[str, ...] = ()  # transformers: what the mlp knob ranges over


def space_shape(space: SearchSpace, device: DeviceProfile, stages: list[str],
                precision_units: list[str], head_units: list[str] | tuple[str, ...] = (),
                mlp_units: list[str] | tuple[str, ...] = ()) -> SpaceShape:
    """Check the search space against the model and the device; name what is wrong."""
    width = space.knobs.width
    if width is not None and width.stages is not None:
        unknown = sorted(set(width.stages) - set(stages))
        if unknown:
            raise ConfigError(f"knobs.width.stages: {unknown} are not stages of the model; "
                              f"allowed: {', '.join(stages)}")
    precisions: tuple[str, ...] = ("fp32",)
    if space.knobs.precision is not None:
        wanted = space.knobs.precision.choices or device.precisions
        unsupported = sorted(set(wanted) - set(device.precisions))
        if unsupported:
            raise ConfigError(f"knobs.precision.choices: {unsupported} not supported by device "
                              f"{device.name}; it supports: {', '.join(device.precisions)}")
        precisions = tuple(dict.fromkeys(wanted))
    return SpaceShape(tuple(stages), tuple(precision_units), precisions,
                      tuple(head_units) if space.knobs.heads is not None else (),
                      tuple(mlp_units) if space.knobs.mlp is not None else ())


def distributions(space: SearchSpace, shape: SpaceShape) -> dict[str, BaseDistribution]:
    """Every Optuna parameter of this space and its choices: what suggest() asks for, and what
    a trial of another study must fit to be kept as history. A width ``keep_range`` is an
    ordered (stepped float) parameter; every other knob is categorical."""
    knobs = space.knobs
    found: dict[str, BaseDistribution] = {}
    if knobs.width is not None:
        keep_range = knobs.width.keep_range
        for stage in shape.stages:
            if knobs.width.stages is None or stage in knobs.width.stages:
                found[f"keep_{stage}"] = CategoricalDistribution(knobs.width.keep_ratios) \
                    if keep_range is None else \
                    FloatDistribution(keep_range.low, keep_range.high, step=keep_range.step)
    if knobs.pruning is not None:
        found["pruning_criterion"] = CategoricalDistribution(knobs.pruning.criteria)
        found["global_pruning_ratio"] = CategoricalDistribution(knobs.pruning.global_ratios)
    if knobs.precision is not None:
        for unit in shape.precision_units:
            found[f"precision_{unit}"] = CategoricalDistribution(list(shape.precisions))
        if len(knobs.precision.calibration) > 1:
            found["calibration_method"] = CategoricalDistribution(knobs.precision.calibration)
    for unit in shape.head_units:
        found[f"heads_{unit}"] = CategoricalDistribution(knobs.heads.keep_ratios)
    for unit in shape.mlp_units:
        found[f"mlp_{unit}"] = CategoricalDistribution(knobs.mlp.keep_ratios)
    return found


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

    def pick(name: str, default: float | str) -> float | str:
        return suggest_parameter(trial, name, found[name]) if name in found else default

    # stepped floats carry binary noise (0.125 + 3 * 0.0625): the ratio is the step's decimal
    keep_ratios = {stage: round(float(pick(f"keep_{stage}", 1.0)), 10) for stage in shape.stages}
    plan = {unit: str(pick(f"precision_{unit}", "fp32")) for unit in shape.precision_units}
    precision = space.knobs.precision
    calibration = precision.calibration[0] if precision is not None else "minmax"
    if any(p in ("int8", "a16w8") for p in plan.values()):
        # define-by-run: the method is a parameter only where it changes the bytes
        calibration = str(pick("calibration_method", calibration))
    heads = {unit: float(pick(f"heads_{unit}", 1.0)) for unit in shape.head_units}
    mlp = {unit: float(pick(f"mlp_{unit}", 1.0)) for unit in shape.mlp_units}
    return Candidate.build(keep_ratios, str(pick("pruning_criterion", "l1")),
                           float(pick("global_pruning_ratio", 0.0)), plan, calibration, heads, mlp)
