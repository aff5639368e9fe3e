"""Progress bar for a search: trials done, best feasible accuracy so far, rejections, failures
(drawn by hwnas/progress.py, as every long piece of work is)."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from hwnas.progress import progress_bar
from hwnas.records import TrialOutcome, TrialStage


class ProgressCallback:
    def __init__(self, total: int, enabled: bool = True, study: optuna.Study | None = None) -> None:
        self.bar = progress_bar(total, "trial", "search", enabled)
        self.best: float | None = None  # the study's, a resumed one's earlier trials included
        for trial in study.get_trials(deepcopy=False) if study is not None else ():
            self._consider(TrialOutcome.from_trial(trial))
        self.rejected = 0
        self.failed = 0
        self.done = 0  # trials this controller finished (counted even with the bar disabled)
        self.last_failure: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        outcome = TrialOutcome.from_trial(trial)
        self.done += 1
        if outcome.stage == TrialStage.REJECTED:
            self.rejected += 1
        elif outcome.stage == TrialStage.FAILED:
            self.failed += 1
            self.last_failure = outcome.failure
        self._consider(outcome)
        best = "-" if self.best is None else f"{self.best:.4f}"
        text = f"best feasible acc {best} | rejected early {self.rejected}"
        if self.failed:
            text += f" | failed {self.failed} (last: {(self.last_failure or '')[:60]})"
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(1)

    def _consider(self, outcome: TrialOutcome) -> None:
        if outcome.feasible and outcome.values and (self.best is None or outcome.values[0] > self.best):
            self.best = outcome.values[0]

    def close(self) -> None:
        self.bar.close()
