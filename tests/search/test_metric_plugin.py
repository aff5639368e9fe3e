"""Issue 21.4: a metric registered from this file alone (throughput, higher is better, read
from the measurement's p50) is an objective and a floor in a real search on digits through
the real agent: Optuna maximises it, a candidate below the floor is infeasible (rejected
before fine-tuning), one above it is feasible, and the report shows it. Peak memory, which
the agent measures, is a budget on the same search."""

from __future__ import annotations

import textwrap

import pytest

from hwnas import metrics
from hwnas.metrics import Metric
from hwnas.pareto import pareto_front, study_directions
from hwnas.records import TrialStage
from hwnas.report.tables import Report, markdown_report, text_table
from hwnas.run import RunFolder, outcomes
from hwnas.search import run_search
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

THROUGHPUT = Metric("throughput_per_s", "inferences/s", True, "measurement",
                    "measured throughput (inferences/s)", "inf/s",
                    read=lambda measurement, _artifact, _basis: 1000.0 / measurement.latency_ms_p50,
                    spec=".0f")


@pytest.fixture(scope="module")
def throughput():
    metrics.register(THROUGHPUT)
    yield THROUGHPUT
    metrics.unregister(THROUGHPUT.name)


def search(folder, budgets: str, search_section: str):
    space, device = folder / "space.yaml", folder / "device.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE).replace(
        "budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}",
        f"objectives: [accuracy, throughput_per_s]\nbudgets: {budgets}") + search_section)
    device.write_text(FAST_DEVICE)
    run_search(space, device, folder / "run", progress=False, log=lambda _: None)
    study = RunFolder.load(folder / "run").open_study()
    return study, outcomes(study)


def test_a_plug_in_metric_is_maximised_and_its_floor_met_is_feasible(tmp_path, throughput):
    # a floor every candidate meets; the size budget still rejects the unpruned fp32 one
    study, found = search(tmp_path, "{throughput_per_s: 1.0, model_size_mb: 0.1, "
                                    "peak_memory_mb: 100000}",
                          ENQUEUED.replace("n_trials: 5", "n_trials: 2\n  sampler: tpe"))
    assert study_directions(study) == ["maximize", "maximize"]
    assert study.metric_names == ["accuracy", "throughput_per_s"]
    small, full = found
    assert small.stage == TrialStage.EVALUATED and small.feasible
    value = 1000.0 / small.measurement.latency_ms_p50
    assert small.values == pytest.approx((small.accuracy_val, value))
    constraints = dict(small.constraints)
    assert constraints["throughput_per_s"] == pytest.approx(1.0 - value / 1.0) and value > 1.0
    # peak memory is carried from the agent and bounded like any ceiling
    memory = small.measurement.peak_memory_mb
    assert memory is not None and memory > 1.0
    assert constraints["peak_memory_mb"] == pytest.approx(memory / 100000 - 1.0)
    assert full.stage == TrialStage.REJECTED and "model_size_mb over budget" in full.rejection
    assert [o.number for o in pareto_front(found, study_directions(study))] == [small.number]
    report = Report.of(study)
    table = text_table(report.outcomes, report)
    assert "inf/s" in table and "peak mem MB" in table and f"{value:.0f}" in table
    assert "throughput_per_s >= 1" in markdown_report(report, [])


def test_a_candidate_below_a_floor_is_infeasible_and_never_fine_tuned(tmp_path, throughput):
    # the engine (the default policy) screens on the floor: no candidate reaches 10^9/s
    study, found = search(tmp_path, "{throughput_per_s: 1.0e9}",
                          "search: {n_trials: 2, seed: 3, sampler: engine}\n")
    screened = [o for o in found if o.stage == TrialStage.REJECTED]
    assert len(screened) >= 2 and not any(o.feasible for o in found)
    for outcome in screened:
        value = 1000.0 / outcome.measurement.latency_ms_p50
        assert dict(outcome.constraints)["throughput_per_s"] == pytest.approx(1.0 - value / 1e9)
        assert outcome.finetune is None and outcome.accuracy_val is None
        assert "throughput_per_s under its floor by" in outcome.rejection
    decisions = [t.user_attrs["budget_decisions"] for t in study.get_trials()
                 if "budget_decisions" in t.user_attrs]
    floors = [d for decided in decisions for d in decided if d["figure"] == "throughput_per_s"]
    assert len(floors) == len(decisions) and not any(d["feasible"] for d in floors)
    assert "no trial meets every budget: budgets broken: throughput_per_s (budget 1e+09; the " \
           "closest trial is 100% under)" in markdown_report(Report.of(study), [])
    # read where the plug-in is not installed: the study still says which budgets are floors
    metrics.unregister(THROUGHPUT.name)
    try:
        text = markdown_report(Report.of(study), [])
        assert "throughput_per_s >= 1e+09" in text and "100% under" in text
    finally:
        metrics.register(THROUGHPUT)
