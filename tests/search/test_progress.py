"""The search's progress line: a resumed search shows the study's best feasible accuracy, not
only what this run found."""

import optuna

from hwnas.records import TrialOutcome, TrialStage
from hwnas.search.progress import ProgressCallback


def told(study, accuracy, constraint, stage=TrialStage.EVALUATED):
    trial = study.ask()
    TrialOutcome(stage).write(trial)
    trial.set_constraint("latency_p90_ms", constraint)
    return study.tell(trial, [accuracy])


def test_a_resumed_search_starts_from_the_studys_best_feasible_accuracy():
    study = optuna.create_study(directions=["maximize"])
    told(study, 0.81, -0.1)
    told(study, 0.95, 0.2)  # over a budget: not the best feasible
    told(study, 0.0, -0.5, TrialStage.REJECTED)
    bar = ProgressCallback(3, enabled=False, study=study)
    assert bar.best == 0.81
    bar(study, told(study, 0.79, -0.1))  # this run's first trial is worse
    assert bar.best == 0.81 and "best feasible acc 0.8100" in bar.bar.postfix
    bar(study, told(study, 0.84, -0.1))
    assert bar.best == 0.84
    assert ProgressCallback(3, enabled=False).best is None
