"""Define-by-run search space: (Optuna trial, SearchSpace) -> Candidate."""

from __future__ import annotations

import dataclasses

import optuna

from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError
from hwnas.records import Candidate


@dataclasses.dataclass(frozen=True)
class SpaceShape:
    """What the base model and device allow: the names the knobs range over."""

    stages: tuple[str, ...]
    precision_units: tuple[str, ...]
    precisions: tuple[str, ...]


def space_shape(space: SearchSpace, device: DeviceProfile, stages: list[str],
                precision_units: list[str]) -> SpaceShape:
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
    return SpaceShape(tuple(stages), tuple(precision_units), precisions)


def parameter_names(space: SearchSpace, shape: SpaceShape) -> set[str]:
    knobs = space.knobs
    names: set[str] = set()
    if knobs.width is not None:
        names |= {f"keep_{s}" for s in shape.stages
                  if knobs.width.stages is None or s in knobs.width.stages}
    if knobs.pruning is not None:
        names |= {"pruning_criterion", "global_pruning_ratio"}
    if knobs.precision is not None:
        names |= {f"precision_{u}" for u in shape.precision_units}
    return names


def check_enqueued(space: SearchSpace, shape: SpaceShape) -> None:
    allowed = parameter_names(space, shape)
    for index, params in enumerate(space.search.enqueue):
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ConfigError(f"search.enqueue.{index}: unknown parameter(s) {unknown}; "
                              f"allowed: {', '.join(sorted(allowed))}")


def suggest(trial: optuna.Trial, space: SearchSpace, shape: SpaceShape) -> Candidate:
    knobs = space.knobs
    keep_ratios = {}
    for stage in shape.stages:
        searched = knobs.width is not None and (knobs.width.stages is None
                                                or stage in knobs.width.stages)
        keep_ratios[stage] = (trial.suggest_categorical(f"keep_{stage}", knobs.width.keep_ratios)
                              if searched else 1.0)
    criterion, global_ratio = "l1", 0.0
    if knobs.pruning is not None:
        criterion = trial.suggest_categorical("pruning_criterion", knobs.pruning.criteria)
        global_ratio = trial.suggest_categorical("global_pruning_ratio", knobs.pruning.global_ratios)
    plan = {unit: (trial.suggest_categorical(f"precision_{unit}", list(shape.precisions))
                   if knobs.precision is not None else "fp32")
            for unit in shape.precision_units}
    return Candidate.build(keep_ratios, criterion, global_ratio, plan)
