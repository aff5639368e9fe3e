"""The search policy's part of a trial's record: what the one trial pipeline decided and
measured on the way (hwnas/search/pipeline.py), beside the TrialOutcome of what was built.

With TrialOutcome (records.py) it is the only writer and reader of a trial's attributes:
the pipeline and the books (hwnas/search/books.py) go through it, never through the keys.
Its stages are TrialStage's values (records.py), plus ``duplicate`` for a trial of a
candidate already paid for, whose record is a copy.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import optuna

DUPLICATE = "duplicate"

# the attribute of each field (the same names: studies written before it read back)
_FIELDS = ("stage", "candidate", "proposed_by", "predicted", "same_as_trial", "hardware",
           "hardware_screened", "hardware_before_remeasuring", "budget_decisions",
           "separate_measurements", "measurements", "measurement_rounds",
           "accuracy_by_fidelity")


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    stage: str | None = None  # a TrialStage value, or DUPLICATE
    candidate: Mapping[str, Any] | None = None  # the candidate as JSON (Evaluator.describe)
    proposed_by: str | None = None  # the engine's strategy, "enqueued" or "base_sampler"
    predicted: Mapping[str, float] | None = None  # the predictors' figures: never measured
    same_as_trial: int | None = None  # a duplicate: the trial it repeats
    hardware: Mapping[str, Any] | None = None  # the report that decided the budgets
    hardware_screened: Mapping[str, Any] | None = None  # before fine-tuning, if measured again
    hardware_before_remeasuring: tuple[Mapping[str, Any], ...] | None = None
    budget_decisions: tuple[Mapping[str, Any], ...] | None = None
    # figure -> every separate measurement of this model (screened copy, then deployed bytes)
    separate_measurements: Mapping[str, tuple[float, ...]] | None = None
    measurements: int | None = None  # hardware measurements taken (re-measurements count)
    measurement_rounds: int | None = None
    accuracy_by_fidelity: Mapping[str, float] | None = None

    def attributes(self) -> dict[str, Any]:
        found = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif name == "separate_measurements":
                value = {figure: list(values) for figure, values in value.items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            found[name] = value
        return found

    def write(self, trial: "optuna.Trial") -> None:
        for key, value in self.attributes().items():
            trial.set_user_attr(key, value)

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> "PolicyRecord":
        values = {name: attrs.get(name) for name in _FIELDS}
        for name in ("hardware_before_remeasuring", "budget_decisions"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        if values["separate_measurements"] is not None:
            values["separate_measurements"] = {figure: tuple(v) for figure, v in
                                               values["separate_measurements"].items()}
        return cls(**values)


class PolicyProgress:
    """A trial's policy record as far as it got, written at every step."""

    def __init__(self, trial: "optuna.Trial") -> None:
        self.trial = trial
        self.record = PolicyRecord()

    def update(self, **changes: Any) -> None:
        self.record = dataclasses.replace(self.record, **changes)
        PolicyRecord(**changes).write(self.trial)  # only what changed goes to the storage
