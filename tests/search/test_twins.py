"""Several controllers proposing one candidate at once measure it once (issue 13): the twin
protocol of hwnas.search.twins.finished_twin, on a real SQLite study, with real threads
racing in every order."""

from __future__ import annotations

import random
import threading
import time

import optuna
import pytest

from hwnas.records import TrialOutcome, TrialStage
from hwnas.search.twins import MEASURES, Progress, finished_twin, reuse
from hwnas.storage import make_storage

# the trials here are asked and told by hand, as several controllers do it inside optimize
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def race(tmp_path, n: int, seed: int, measurer_fails: bool = False) -> list[str]:
    """n trials of one candidate look for twins at random moments; returns each one's part:
    'measured', or 'reused #N'."""
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / f'{seed}.db'}"),
                                study_name=f"s{seed}")
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        study.enqueue_trial({"x": 1})
        trials.append(study.ask())
    parts: dict[int, str] = {}
    failed_once = [False]
    lock = threading.Lock()

    def controller(trial: optuna.Trial) -> None:
        time.sleep(rng.uniform(0, 0.3))
        trial.suggest_categorical("x", [1, 2])  # the parameters reach the study: the claim
        progress = Progress(trial, TrialOutcome(TrialStage.RUNNING))
        while True:
            twin = finished_twin(trial, {"pool"}, progress, poll_s=0.05)
            if twin is not None:
                parts[trial.number] = f"reused #{twin.number}"
                study.tell(trial, list(reuse(trial, twin, None)))  # marked as a copy
                return
            time.sleep(0.2)  # measuring
            with lock:
                fail = measurer_fails and not failed_once[0]
                failed_once[0] = failed_once[0] or fail
            if fail:  # its device is lost: the trial fails, a waiting twin takes over
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                parts[trial.number] = "failed"
                return
            parts[trial.number] = "measured"
            study.tell(trial, 0.5)
            return

    threads = [threading.Thread(target=controller, args=(t,)) for t in trials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    roles = [TrialOutcome.from_trial(t).twin_role for t in study.get_trials()]
    assert MEASURES in roles
    return [parts[t.number] for t in trials]


def test_one_candidate_proposed_by_several_controllers_at_once_is_measured_once(tmp_path):
    for seed in range(8):
        parts = race(tmp_path, n=2 + seed % 3, seed=seed)
        assert parts.count("measured") == 1, (seed, parts)
        measured = parts.index("measured")
        assert all(p == f"reused #{measured}" for i, p in enumerate(parts) if i != measured), \
            (seed, parts)


def test_when_the_measuring_twin_fails_exactly_one_waiting_twin_takes_over(tmp_path):
    for seed in range(4):
        parts = race(tmp_path, n=3, seed=100 + seed, measurer_fails=True)
        assert parts.count("failed") == 1 and parts.count("measured") == 1, (seed, parts)
        assert parts.count(f"reused #{parts.index('measured')}") == 1, (seed, parts)
