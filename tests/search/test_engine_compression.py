"""The compression search through the search engine (`search.sampler: engine`): the same
policy code as the replay, a real search on digits through the real agent, the same records."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwnas.records import TrialStage
from hwnas.run import RunFolder, outcomes
from hwnas.search.engine import Policy, SearchEngine
from hwnas.search.evaluator import Budget, Evaluator, HardwareFigure, HardwareReport
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

HWNAS = str(Path(sys.executable).parent / "hwnas")
ENGINE_SPACE = DIGITS_SPACE + ENQUEUED.replace("n_trials: 5", "n_trials: 9\n  sampler: engine")


def run_hwnas(*args, expect=0):
    done = subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True, timeout=900)
    assert done.returncode == expect, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    space, device = folder / "digits.yaml", folder / "device.yaml"
    space.write_text(ENGINE_SPACE)
    device.write_text(FAST_DEVICE)
    output = run_hwnas("search", space, "--device", device, "--run-dir", folder / "run",
                       "--no-progress")
    return folder, output


def test_the_engine_runs_the_compression_search_and_keeps_the_same_records(engine_run):
    folder, output = engine_run
    study = RunFolder.load(folder / "run").open_study()
    trials = study.get_trials()
    found = outcomes(study)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 9
    assert study.user_attrs["engine"]["policy"]["acquisition"] == "frontier"
    # beyond the user's two enqueued candidates, the engine's strategies proposed every
    # candidate (as the study's sampler), not its base sampler
    proposed = [t.user_attrs["proposed_by"] for t in trials]
    assert proposed[:2] == ["enqueued", "enqueued"]
    assert set(proposed[2:]) <= {"ladder_start", "budget_exchange", "model_pool"}, proposed
    # it started on a uniform ladder: the same keep in every stage, one precision, no
    # global pruning; the first of them that fits the size budget statically
    start = found[2].candidate
    assert len({k for _s, k in start.keep_ratios}) == 1 and start.global_pruning_ratio == 0.0
    assert len({p for _u, p in start.precision_plan}) == 1
    # past the user's candidates, nothing over the size budget was shipped to the device
    assert all(o.artifact.size_mb <= 0.1 for o in found[2:] if o.artifact is not None)
    full_width = found[1]  # the enqueued unpruned fp32 model: 0.5 MB > 0.1 MB
    assert full_width.stage == TrialStage.REJECTED and full_width.finetune is None
    assert "model_size_mb over budget" in full_width.rejection
    assert trials[1].user_attrs["budget_decisions"][1]["figure"] == "model_size_mb"
    evaluated = [(t, o) for t, o in zip(trials, found) if o.stage == TrialStage.EVALUATED]
    assert evaluated
    for trial, outcome in evaluated:
        # the deployed bytes decide: measured after fine-tuning, constraints from them
        assert outcome.measurement.model_sha256 == outcome.artifact.sha256
        assert outcome.screen_measurement.model_sha256 != outcome.artifact.sha256
        assert trial.user_attrs["hardware"]["detail"]["model_sha256"] == outcome.artifact.sha256
        assert "hardware_screened" in trial.user_attrs
        assert dict(outcome.constraints)["model_size_mb"] == pytest.approx(
            outcome.artifact.size_mb / 0.1 - 1, abs=1e-4)
        assert outcome.values[0] == outcome.accuracy_val and outcome.finetune.steps > 0
        # the record keeps the measurement that decided (the median of separate ones)
        latency = trial.user_attrs["budget_decisions"][0]
        assert latency["figure"] == "latency_p90_ms"
        assert outcome.measurement.latency_ms_p90 == latency["value"]
        separate = trial.user_attrs["separate_measurements"]["latency_p90_ms"]
        # the screened copy's measurements, then the deployed bytes' (this decision's)
        assert separate[-len(latency["measured"]):] == latency["measured"]
        assert trial.user_attrs["measurements"] == len(separate) > len(latency["measured"])
    assert "best feasible: trial" in output


def test_the_engine_study_reports_and_continues(engine_run):
    folder, _ = engine_run
    space, device = folder / "digits.yaml", folder / "device.yaml"
    output = run_hwnas("search", space, "--device", device, "--run-dir", folder / "run",
                       "--no-progress", "--trials", "10")
    study = RunFolder.load(folder / "run").open_study()
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 10
    assert "9 trials done, 1 to go" in output
    # a candidate is never paid for twice across the resumption
    paid = [o.candidate for o in outcomes(study) if o.copied_from is None and o.candidate]
    assert len(paid) == len(set(paid))
    run_hwnas("report", folder / "run")
    assert (folder / "run" / "report" / "report.html").is_file()


def test_the_engine_searches_a_pool_of_two_devices(tmp_path):
    """sampler: engine on two devices of different pools: one trial per device at a time,
    each proposed for its device's pool from that pool's own books (its figures, its
    budgets), and no candidate measured twice on one pool."""
    space, device, other = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "e.yaml"
    space.write_text(ENGINE_SPACE.replace("n_trials: 9", "n_trials: 6"))
    device.write_text(FAST_DEVICE)
    other.write_text(FAST_DEVICE.replace("name: test-local", "name: test-other"))
    output = run_hwnas("search", space, "--device", device, "--device", other, "--run-dir",
                       tmp_path / "run", "--no-progress")
    assert "Traceback" not in output
    study = RunFolder.load(tmp_path / "run").open_study()
    trials, found = study.get_trials(), outcomes(study)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 6
    assert {o.device_pool for o in found} == {"test-local", "test-other"}
    proposed = [t.user_attrs.get("proposed_by") for t in trials]
    assert "base_sampler" not in proposed and proposed.count("enqueued") == 2, proposed
    for pool in ("test-local", "test-other"):
        paid = [o.candidate for o in found if o.device_pool == pool and o.copied_from is None
                and o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED)]
        assert len(paid) == len(set(paid)), f"a candidate was measured twice on {pool}"
    assert set(study.user_attrs["engine"]["pools"]) == {"test-local", "test-other"}


class Quadratic(Evaluator):
    """A test space with one ordered (stepped float) knob: accuracy peaks at 0.5, the cost
    grows with it, the budget allows up to 0.7."""

    budgets = (Budget("cost", 0.7),)

    def suggest(self, trial):
        return round(trial.suggest_float("keep", 0.125, 1.0, step=0.0625), 10)

    def measure(self, candidate, rounds=None):
        return HardwareReport((HardwareFigure.exact("cost", candidate),))

    def evaluate(self, candidate, fidelity):
        return 1.0 - (candidate - 0.5) ** 2


def test_the_engine_proposes_stepped_floats_on_their_grid():
    study = optuna.create_study(directions=["maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    engine = SearchEngine(Quadratic(), study, Policy(use_proxies=False, max_evaluations=8,
                                                     pool_size=50, predictor_min_measurements=4))
    result = engine.run()
    values = [t.params["keep"] for t in study.trials]
    assert all(abs((v - 0.125) / 0.0625 - round((v - 0.125) / 0.0625)) < 1e-9 for v in values)
    assert len(values) == len(set(values))  # nothing proposed twice
    ranker = engine.sampler._ranker(None, study)[0]
    assert ranker.neighbours({"keep": 0.5}) == [{"keep": 0.4375}, {"keep": 0.5625}]
    assert max(e.accuracy for e in result.evaluations if e.feasible) >= 1.0 - 0.0625 ** 2


class Frontier(Evaluator):
    """Two ordered knobs: the bytes (a + b, known statically) must stay within 1.2, the
    measured latency (a) within 0.9; accuracy grows faster with a than with b."""

    budgets = (Budget("size", 1.2), Budget("latency", 0.9))

    def __init__(self):
        self.measured, self.static = [], []

    def suggest(self, trial):
        return (round(trial.suggest_float("a", 0.125, 1.0, step=0.0625), 10),
                round(trial.suggest_float("b", 0.125, 1.0, step=0.0625), 10))

    def static_figures(self, candidate):
        self.static.append(candidate)
        return {"size": sum(candidate)}

    def proxies(self, candidate):
        return {"work": 3 * candidate[0] + candidate[1]}

    def ladders(self):
        keeps = [1.0 - i * 0.0625 for i in range(15)]
        return [[{"a": k, "b": k} for k in keeps]]

    def measure(self, candidate, rounds=None):
        self.measured.append(candidate)
        return HardwareReport((HardwareFigure.exact("size", sum(candidate)),
                               HardwareFigure.exact("latency", candidate[0])))

    def evaluate(self, candidate, fidelity):
        return 2 * candidate[0] + candidate[1]


def test_the_frontier_policy_starts_uniform_then_moves_budget_where_it_pays():
    study = optuna.create_study(directions=["maximize"])
    evaluator = Frontier()
    engine = SearchEngine(evaluator, study, Policy(acquisition="frontier", max_evaluations=6,
                                                   pool_size=50, predictor_min_measurements=4))
    result = engine.run()
    # the ladder's first rung that fits statically: 2 * 0.5625 <= 1.2 < 2 * 0.625
    assert study.trials[0].params == {"a": 0.5625, "b": 0.5625}
    assert result.evaluations[0].candidate == (0.5625, 0.5625)
    # nothing that breaks the static budget was ever measured, let alone evaluated
    assert all(sum(c) <= 1.2 + 1e-9 for c in evaluator.measured)
    assert {(0.625, 0.625), (1.0, 1.0)} <= set(evaluator.static)
    assert all(e.feasible for e in result.evaluations)
    # budget moved from b to a, as far as the measured latency budget allows
    best = max(result.evaluations, key=lambda e: e.accuracy).candidate
    assert best[0] > best[1] and best[0] <= 0.9 and sum(best) == pytest.approx(1.1875, abs=0.07)


class SlowerOnceTrained(Quadratic):
    """The deployed bytes are measured again after evaluation (as the compression search
    does) and run slower than the screened copy: 0.2 more cost."""

    measure_after_evaluation = True

    def __init__(self):
        self.evaluated = set()

    def measure(self, candidate, rounds=None):
        return HardwareReport((HardwareFigure.exact(
            "cost", candidate + (0.2 if candidate in self.evaluated else 0.0)),))

    def evaluate(self, candidate, fidelity):
        self.evaluated.add(candidate)
        return super().evaluate(candidate, fidelity)


def test_the_deployed_measurement_decides_the_constraints_not_the_screened_one():
    # Optuna keeps a constraint's first value and ignores later ones: the screened figure
    # (under budget) must not stand for deployed bytes that break it
    study = optuna.create_study(directions=["maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    engine = SearchEngine(SlowerOnceTrained(), study, Policy(use_proxies=False, max_evaluations=8,
                                                             pool_size=50,
                                                             predictor_min_measurements=4))
    result = engine.run()
    evaluated = [t for t in study.trials if t.user_attrs.get("stage") == "evaluated"]
    assert any(t.params["keep"] > 0.5 for t in evaluated)  # screened within 0.7, deployed over
    for trial in evaluated:
        deployed = trial.params["keep"] + 0.2
        assert trial.constraints == {"cost": pytest.approx(deployed / 0.7 - 1)}
        assert trial.user_attrs["budget_decisions"][0]["feasible"] == (deployed <= 0.7)
    feasible = {e.candidate for e in result.evaluations if e.feasible}
    assert feasible == {t.params["keep"] for t in evaluated if t.params["keep"] + 0.2 <= 0.7}
