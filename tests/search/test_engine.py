"""The search engine on a real SQLite Optuna study, against the NAS-Bench-201 replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwnas.bench.cells import load_cell_space
from hwnas.bench.replay import ReplayEvaluator, ReplayTable
from hwnas.search.engine import (STAGE_DUPLICATE, STAGE_EVALUATED, STAGE_REJECTED, STAGE_SKIPPED,
                                 STAGE_STOPPED, Policy, SearchEngine)
from tests.conftest import REPO

DATA = REPO / "benchmarks" / "data" / "hw-nas-bench"  # in the repository: no test skips
METRIC = "raspi4_latency"


@pytest.fixture(scope="module")
def table() -> ReplayTable:
    return ReplayTable.load(DATA / "nb201_valid_nets.csv", DATA / "hw_cifar10.csv", [METRIC])


@pytest.fixture(scope="module")
def space():
    return load_cell_space(REPO / "search_spaces" / "nb201.yaml")


def evaluator(space, table, **kwargs) -> ReplayEvaluator:
    return ReplayEvaluator(space, table, [table.budget(METRIC, 0.25)], **kwargs)


def sqlite_study(tmp_path: Path, sampler=None, pruner=None) -> optuna.Study:
    """Seeded by default: the engine asks the study's sampler for its first trial, and an
    unseeded one makes a test pass or fail by the draw."""
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="replay",
                               direction="maximize",
                               sampler=sampler or optuna.samplers.RandomSampler(seed=0),
                               pruner=pruner, load_if_exists=True)


MODEL = Policy(use_proxies=False, max_evaluations=6, pool_size=200,
               predictor_min_measurements=8)


def test_model_policy_screens_first_and_records_each_trial(tmp_path, space, table):
    replay = evaluator(space, table)
    study = sqlite_study(tmp_path)
    result = SearchEngine(replay, study, MODEL, seed=1).run()
    budget = replay.budgets[0]
    trials = optuna.load_study(study_name="replay", storage=study._storage).trials
    evaluated = [t for t in trials if t.user_attrs["stage"] == STAGE_EVALUATED]
    rejected = [t for t in trials if t.user_attrs["stage"] == STAGE_REJECTED]
    assert len(evaluated) == len(result.evaluations) == 6
    # never pays an accuracy evaluation for a candidate that breaks the budget
    assert replay.accuracy_evaluations == 6
    for trial in evaluated:
        net = tuple(int(x) for x in trial.user_attrs["candidate"]["net"].strip("()").split(","))
        assert trial.values[0] == table.accuracy[net]
        assert table.hardware[METRIC][net] <= budget.limit
        assert trial.constraints[METRIC] <= 0
        assert trial.user_attrs["budget_decisions"][0]["feasible"] is True
    for trial in rejected:
        assert trial.constraints[METRIC] > 0
        assert "accuracy_by_fidelity" not in trial.user_attrs
    assert result.measurements == len(evaluated) + len(rejected) == replay.measurements


def test_resume_continues_without_paying_twice(tmp_path, space, table):
    first = evaluator(space, table)
    SearchEngine(first, sqlite_study(tmp_path), MODEL, seed=2).run()
    # a new controller process: same storage, a fresh evaluator, a larger budget
    second = evaluator(space, table)
    more = dataclasses.replace(MODEL, max_evaluations=10)
    result = SearchEngine(second, sqlite_study(tmp_path), more, seed=2).run()
    assert len(result.evaluations) == 10
    assert second.accuracy_evaluations == 4  # only the new ones
    nets = [e.candidate for e in result.evaluations]
    assert len(set(nets)) == len(nets)
    assert result.measurements == first.measurements + second.measurements


def test_the_spread_between_measurements_is_learnt_recorded_and_resumed(tmp_path, space, table):
    """A device whose measurements drift apart by ~6%: the engine measures near-budget
    candidates apart again, records every separate measurement and learns the spread from
    them; a new controller on the same study starts from the spread learnt, not the prior.
    (40 evaluations: every one of 12 first draws then gives >= 4 models measured apart and
    >= 12 degrees of freedom; with 20, a quarter of them gave fewer.)"""
    policy = dataclasses.replace(MODEL, max_evaluations=40, between_prior=0.15)
    drifting = evaluator(space, table, noise_cv=0.01, drift_cv=0.06, seed=5)
    study = sqlite_study(tmp_path)
    engine = SearchEngine(drifting, study, policy, seed=3)
    engine.run()
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    apart = [t for t in trials if len(t.user_attrs["separate_measurements"][METRIC]) > 1]
    assert len(apart) >= 4
    for trial in apart:
        (decision,) = trial.user_attrs["budget_decisions"]
        assert decision["measured"] == trial.user_attrs["separate_measurements"][METRIC]
        assert decision["between_sd"] > 0
        assert trial.user_attrs["measurements"] == len(decision["measured"])
    learnt = study.user_attrs["engine"]["between_measurements"][METRIC]
    assert learnt["degrees_of_freedom"] >= 10
    assert learnt["sd_log"] < 0.10  # towards the 6% drift, away from the 15% prior
    resumed = SearchEngine(evaluator(space, table, noise_cv=0.01, drift_cv=0.06), study, policy)
    assert resumed.sampler.books_of(None, study).between()[METRIC].sd == \
        pytest.approx(learnt["sd_log"])


def test_plain_search_evaluates_every_trial_and_sets_constraints(tmp_path, space, table):
    replay = evaluator(space, table)
    plain = Policy(acquisition="sampler", screening=False, predictor=False, use_proxies=False,
                   max_evaluations=12)
    study = sqlite_study(tmp_path, sampler=optuna.samplers.RandomSampler(seed=0))
    result = SearchEngine(replay, study, plain).run()
    stages = [t.user_attrs["stage"] for t in study.trials]
    assert set(stages) <= {STAGE_EVALUATED, STAGE_DUPLICATE}
    assert replay.accuracy_evaluations == len(result.evaluations) == 12
    assert any(not e.feasible for e in result.evaluations)  # 75% of cells break the budget
    assert all(METRIC in t.constraints for t in study.trials)


def test_equivalent_encodings_are_paid_once(tmp_path, space, table):
    """Cells with dead edges are the same model as their canonical cell."""
    replay = evaluator(space, table)
    study = sqlite_study(tmp_path)
    dead = {"edge_0_1": "none", "edge_0_2": "none", "edge_1_2": "nor_conv_3x3",
            "edge_0_3": "skip_connect", "edge_1_3": "nor_conv_1x1", "edge_2_3": "avg_pool_3x3"}
    canonical = dead | {"edge_1_2": "none", "edge_1_3": "none", "edge_2_3": "none"}
    study.enqueue_trial(canonical)
    study.enqueue_trial(dead)
    policy = Policy(acquisition="sampler", screening=False, predictor=False, use_proxies=False,
                    max_evaluations=2)
    SearchEngine(replay, study, policy).run()
    second = study.trials[1]
    assert second.user_attrs["stage"] == STAGE_DUPLICATE
    assert second.user_attrs["same_as_trial"] == 0
    assert second.values == study.trials[0].values
    assert len(study.trials) == 3  # the repeat was free: a third trial made the second evaluation
    assert replay.accuracy_evaluations == 2


def test_predictor_skips_are_predictions_never_measurements(tmp_path, space, table):
    replay = ReplayEvaluator(space, table, [table.budget(METRIC, 0.05)])
    # an Optuna sampler proposes, most proposals are far over a 5th-percentile budget
    policy = Policy(acquisition="sampler", use_proxies=False, max_evaluations=4,
                    predictor_min_measurements=8, skip_margin=0.1, skip_probability=0.2)
    study = sqlite_study(tmp_path, sampler=optuna.samplers.RandomSampler(seed=0))
    result = SearchEngine(replay, study, policy, seed=0).run()
    skipped = [t for t in study.trials if t.user_attrs["stage"] == STAGE_SKIPPED]
    assert skipped, "a budget at the 5th percentile must give the predictor something to skip"
    assert result.skipped_by_prediction == len(skipped)
    for trial in skipped:
        assert trial.state == TrialState.PRUNED
        assert trial.constraints == {}  # nothing measured, so no budget verdict
        assert "hardware" not in trial.user_attrs
        assert trial.user_attrs["predicted"][METRIC] >= 1.1 * replay.budgets[0].limit
    measured = sum(1 for t in study.trials if "hardware" in t.user_attrs)
    assert replay.measurements == measured
    rank = study.user_attrs["predictor_rank_accuracy"][METRIC]
    assert rank["pairs"] > 0 and rank["spearman"] is not None


class TwoFidelityReplay(ReplayEvaluator):
    """A replay with a cheap first fidelity: the table's accuracy less a fixed penalty per
    operation that is not a convolution, so the low rung ranks cells like the full one."""

    fidelities = (0.25, 1.0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paid: list[float] = []

    def evaluate(self, candidate, fidelity):
        self.paid.append(fidelity)
        full = self.table.accuracy[candidate.ops]
        return full if fidelity == 1.0 else full - 5.0 - sum(op not in (2, 3) for op in candidate.ops)


def test_fidelity_schedule_stops_weak_candidates_early(tmp_path, space, table):
    replay = TwoFidelityReplay(space, table, [table.budget(METRIC, 0.5)])
    policy = Policy(acquisition="sampler", predictor=False, use_proxies=False, max_evaluations=6)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    SearchEngine(replay, study, policy).run()
    stopped = [t for t in study.trials if t.user_attrs["stage"] == STAGE_STOPPED]
    assert stopped, "the median pruner stops some candidates after the cheap fidelity"
    for trial in stopped:
        assert trial.state == TrialState.PRUNED
        assert list(trial.user_attrs["accuracy_by_fidelity"]) == ["0.25"]
    assert replay.paid.count(0.25) == replay.paid.count(1.0) + len(stopped)
