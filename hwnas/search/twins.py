"""A trial's record as it goes (Progress), and twins: trials of one candidate at once.

Several controllers (threads of a pool, `hwnas worker` processes) may propose the same
candidate at the same time: they agree on one to measure it, and the others record a copy.
"""

from __future__ import annotations

import dataclasses
import time

import optuna
from optuna.trial import TrialState

from hwnas.records import TrialOutcome, TrialStage
from hwnas.search.controllers import controller_id, fail_abandoned_trials


class Progress:
    """A trial's outcome as far as it got, written to the study at every step: a failure, or
    a controller killed mid-trial, still leaves what was found."""

    def __init__(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        self.trial = trial
        self.outcome = outcome
        outcome.write(trial)

    def update(self, **changes: object) -> None:
        self.outcome = dataclasses.replace(self.outcome, **changes)  # type: ignore[arg-type]
        self.outcome.write(self.trial)

    def failed(self, exc: BaseException) -> None:
        self.update(stage=TrialStage.FAILED, failure=failure(exc))


TWIN_WAIT_S = 3600.0


MEASURES, WAITS = "measures", "waits"


def finished_twin(trial: optuna.Trial, pools: set[str], progress: "Progress | None" = None,
                  poll_s: float = 2.0) -> optuna.trial.FrozenTrial | None:
    """A finished trial of the same candidate (same parameters) on a device of one of these
    pools, waiting for one that another controller runs; None if this trial is to measure it.

    Trials proposing one candidate at once agree on one to measure it. A trial's parameters
    are in the study before it looks (suggest writes them), so of two twins at least one sees
    the other. A trial waits if it sees a lower-numbered running twin or one that measures;
    otherwise it lets higher-numbered twins that have not decided yet decide (they never wait
    for a decision themselves), and then measures. Its role is recorded for the others. If the
    one that measures fails, the waiting ones decide again."""
    deadline = time.monotonic() + TWIN_WAIT_S
    role = None
    while True:
        twins = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number != trial.number and t.params == trial.params
                 and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
                 and _twin_of_pools(TrialOutcome.from_trial(t), pools)]
        done = [t for t in twins if t.state == TrialState.COMPLETE]
        if done:  # the trial that measured it, rather than another copy of it
            return min(done, key=lambda t: (TrialOutcome.from_trial(t).copied_from is not None,
                                            t.number))
        running = {t.number: TrialOutcome.from_trial(t).twin_role for t in twins
                   if t.state == TrialState.RUNNING}
        if time.monotonic() > deadline or not running:
            decision = MEASURES
        elif any(n < trial.number for n in running) or MEASURES in running.values():
            decision = WAITS
        elif None in running.values():
            decision = None  # higher-numbered twins are deciding now
        else:
            decision = MEASURES  # every twin waits: this one measures
        if decision is not None and decision != role and progress is not None:
            progress.update(twin_role=decision)
        role = decision or role
        if decision == MEASURES:
            return None
        time.sleep(poll_s if decision == WAITS else min(poll_s, 0.2))
        fail_abandoned_trials(trial.study)  # a twin whose controller died will not finish


def _twin_of_pools(outcome: TrialOutcome, pools: set[str]) -> bool:
    """A search trial measured on a device of these pools (a finalized model is a longer
    fine-tune of its candidate, not a twin)."""
    return outcome.finalized_from is None and outcome.device_pool in pools | {None}


def reuse(trial: optuna.Trial, twin: optuna.trial.FrozenTrial,
          config_version: str | None) -> tuple[float, ...]:
    """Record the twin's outcome as this trial's (marked as a copy) instead of measuring."""
    outcome = TrialOutcome.from_trial(twin)
    dataclasses.replace(outcome, copied_from=f"{trial.study.study_name}#{twin.number}",
                        controller=controller_id(), pending_job=None, twin_role=WAITS,
                        config_version=outcome.config_version or config_version).write(trial)
    return tuple(twin.values)


def failure(exc: BaseException) -> str:
    """What a failed trial stores: the error's class and message."""
    return f"{type(exc).__name__}: {exc}"
