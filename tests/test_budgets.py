"""Budgets -> constraints: power and energy come from the sensor or the measurement fails."""

import pytest

from hwnas.budgets import constraint_values, objective_values
from hwnas.config.models import Budgets
from hwnas.errors import MeasurementError
from hwnas.records import Artifact, Measurement

REPORT = {"model_sha256": "a" * 64, "iterations": 100, "unstable": False,
          "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.05, "std": 0.1, "cv": 0.1,
                         "ci95_p50": [0.98, 1.02]},
          "runtime": {"execution_providers": ["CPUExecutionProvider"]}}
POWER = {"kind": "command", "covers": "external meter (usbmeter)", "rate_hz": 10.0, "samples": 40,
         "idle_samples": 20, "mean_w": 6.0, "peak_w": 7.5, "idle_w": 2.0,
         "energy_mj_per_inference": 6.0, "energy_mj_per_inference_above_idle": 4.0}
ARTIFACT = Artifact("", "a" * 64, 200_000, (), 1000)


def test_power_and_energy_budgets_are_relative_excess_on_the_chosen_basis():
    measurement = Measurement.from_agent("dev", dict(REPORT, power=POWER))
    budgets = Budgets(latency_p90_ms=1.0, power_mean_w=5.0, power_peak_w=10.0,
                      energy_mj_per_inference=5.0)
    values = constraint_values(budgets, measurement, ARTIFACT)
    assert values == pytest.approx({"latency_p90_ms": 0.2, "power_mean_w": 0.2,
                                    "power_peak_w": -0.25, "energy_mj_per_inference": 0.2})
    above_idle = budgets.model_copy(update={"energy_basis": "above_idle"})
    assert constraint_values(above_idle, measurement, ARTIFACT)["energy_mj_per_inference"] == \
        pytest.approx(-0.2)


def test_a_power_budget_without_a_power_figure_fails_the_measurement_with_the_agents_reason():
    lost = Measurement.from_agent("dev", dict(REPORT, power=dict(
        POWER, mean_w=None, error="only 3 samples in the timed phase (at least 20 needed)")))
    assert lost.power is None and lost.power_mean_w is None
    with pytest.raises(MeasurementError, match="power_mean_w needed.*only 3 samples"):
        constraint_values(Budgets(power_mean_w=5.0), lost, ARTIFACT)
    no_sensor = Measurement.from_agent("dev", REPORT)
    with pytest.raises(MeasurementError, match="measured no power"):
        constraint_values(Budgets(energy_mj_per_inference=1.0), no_sensor, ARTIFACT)
    # latency alone needs no power figure
    assert constraint_values(Budgets(latency_p90_ms=2.0), no_sensor, ARTIFACT) == \
        pytest.approx({"latency_p90_ms": -0.4})


def test_energy_can_be_an_objective():
    from hwnas.config.models import SearchSpace

    space = SearchSpace.model_validate({"name": "s", "base_model": {"builtin": "small_cnn"},
                                        "dataset": {"builtin": "digits"},
                                        "objectives": ["accuracy", "energy_mj_per_inference"]})
    measurement = Measurement.from_agent("dev", dict(REPORT, power=POWER))
    assert objective_values(space, 0.9, measurement, ARTIFACT) == (0.9, 6.0)
    assert objective_values(space, 0.9, measurement, ARTIFACT, "above_idle") == (0.9, 4.0)


def test_the_front_has_one_row_per_model_and_drops_dominated_and_infeasible_trials():
    from hwnas.records import Artifact, TrialOutcome, TrialStage
    from hwnas.pareto import pareto_front

    def trial(number, sha, values, constraints=(("latency_p90_ms", -0.1),)):
        return TrialOutcome(TrialStage.EVALUATED, artifact=Artifact("m.onnx", sha * 64, 10, (), 1),
                            number=number, values=values, constraints=constraints)

    found = [trial(2, "a", (0.87, 0.05)), trial(5, "a", (0.87, 0.05)),  # 5 re-proposed 2
             trial(7, "b", (0.90, 0.07)), trial(8, "c", (0.85, 0.08)),  # 8 is dominated
             trial(9, "d", (0.95, 0.01), (("latency_p90_ms", 0.2),))]  # 9 breaks a budget
    assert [o.number for o in pareto_front(found, ["maximize", "minimize"])] == [2, 7]


def test_the_best_feasible_trial_of_equally_accurate_ones_is_the_front_model():
    """Two trials tie on accuracy; the second is faster: it is the front's, and the best (the
    first of the tie, dominated, used to be named best while the front showed the other)."""
    from hwnas.pareto import best_feasible, pareto_front
    from hwnas.records import Artifact, TrialOutcome, TrialStage

    def trial(number, sha, values):
        return TrialOutcome(TrialStage.EVALUATED, artifact=Artifact("m.onnx", sha * 64, 10, (), 1),
                            number=number, values=values, constraints=(("latency_p90_ms", -0.1),))

    found = [trial(0, "a", (0.9861, 0.042)), trial(1, "b", (0.9861, 0.041)),
             trial(2, "c", (0.95, 0.01))]
    directions = ["maximize", "minimize"]
    assert [o.number for o in pareto_front(found, directions)] == [1, 2]
    assert best_feasible(found, directions).number == 1
    assert best_feasible(pareto_front(found, directions)).number == 1


def test_a_small_excess_never_reads_as_zero_percent():
    from hwnas.budgets import describe_excess

    # p90 0.04008 ms against 0.04 ms read "over budget by 0%" (a new user's report)
    assert describe_excess({"latency_p90_ms": 0.002, "model_size_mb": 0.0}) == \
        "latency_p90_ms over budget by 0.2%"
    assert describe_excess({"latency_p90_ms": 0.124, "model_size_mb": 0.00031}) == \
        "latency_p90_ms over budget by 12%, model_size_mb over budget by 0.031%"
