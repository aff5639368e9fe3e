"""Progress bar for a search: trials done, best feasible accuracy so far, ETA."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values())


class ProgressCallback:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, unit="trial", desc="search", disable=not enabled,
                        dynamic_ncols=True)
        self.best: float | None = None
        self.rejected = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("stage") == "rejected_before_finetune":
            self.rejected += 1
        if is_feasible(trial) and trial.values and (self.best is None or trial.values[0] > self.best):
            self.best = trial.values[0]
        best = "-" if self.best is None else f"{self.best:.4f}"
        self.bar.set_postfix_str(f"best feasible acc {best} | rejected early {self.rejected}",
                                 refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
