"""The metric registry: one entry per metric, read by budgets, directions and reports."""

import sys
import textwrap
from pathlib import Path

import pytest

from hwnas import metrics
from hwnas.budgets import budget_text, constraint_values, describe_excess, measured
from hwnas.config.models import Budgets
from hwnas.errors import ConfigError, MeasurementError
from hwnas.metrics import Metric
from hwnas.records import Artifact, Measurement
from tests.test_budgets import ARTIFACT, REPORT

THROUGHPUT = Metric("throughput_per_s", "inferences/s", True, "measurement",
                    "measured throughput (inferences/s)", "inf/s",
                    read=lambda measurement, _artifact, _basis: 1000.0 / measurement.latency_ms_p50,
                    spec=".0f")


@pytest.fixture()
def throughput():
    metrics.register(THROUGHPUT)
    yield THROUGHPUT
    metrics.unregister(THROUGHPUT.name)


def test_the_built_in_metrics_have_one_name_a_unit_and_a_direction():
    by_name = {m.name: m for m in metrics.all_metrics()}
    assert by_name["accuracy"].direction == "maximize" and not by_name["accuracy"].budgetable
    for name in ("latency_p50_ms", "latency_p90_ms", "model_size_mb", "peak_memory_mb",
                 "power_mean_w", "power_peak_w", "energy_mj_per_inference"):
        assert by_name[name].direction == "minimize" and by_name[name].bound == "ceiling"
        assert by_name[name].unit and by_name[name].label
    # the one spelling: no metric is named as the Measurement's attributes are
    assert not [n for n in by_name if n.startswith("latency_ms")]
    assert by_name["latency_p90_ms"].field == "latency_ms_p90"
    assert metrics.directions(["accuracy", "latency_p90_ms", "model_size_mb"]) == \
        ["maximize", "minimize", "minimize"]


def test_values_come_from_the_measurement_and_the_bytes():
    measurement = Measurement.from_agent("dev", dict(REPORT, peak_rss_mb=87.5))
    assert measurement.peak_memory_mb == 87.5  # the agent's peak_rss_mb, no longer dropped
    figures = measured(measurement, ARTIFACT)
    assert figures == pytest.approx({"latency_p50_ms": 1.0, "latency_p90_ms": 1.2,
                                     "model_size_mb": 0.2, "peak_memory_mb": 87.5})
    # an agent from before peak memory was carried: a budget on it fails the measurement
    old = Measurement.from_agent("dev", REPORT)
    assert old.peak_memory_mb is None and "peak_memory_mb" not in measured(old, ARTIFACT)
    with pytest.raises(MeasurementError, match="peak_memory_mb needed.*gave no peak_memory_mb"):
        constraint_values(Budgets(peak_memory_mb=100.0), old, ARTIFACT)
    # the record keeps the agent's JSON whole: read back, the figure is there again
    assert Measurement.from_dict(measurement.to_dict()).peak_memory_mb == 87.5


def test_peak_memory_is_a_budget_like_any_ceiling():
    measurement = Measurement.from_agent("dev", dict(REPORT, peak_rss_mb=120.0))
    values = constraint_values(Budgets(peak_memory_mb=100.0, latency_p90_ms=2.0), measurement,
                               ARTIFACT)
    assert values == pytest.approx({"peak_memory_mb": 0.2, "latency_p90_ms": -0.4})
    assert describe_excess(values) == "peak_memory_mb over budget by 20%"


def test_a_budget_on_a_higher_is_better_metric_is_a_floor(throughput):
    assert throughput.direction == "maximize" and throughput.bound == "floor"
    measurement = Measurement.from_agent("dev", REPORT)  # p50 1.0 ms: 1000 inferences/s
    assert measured(measurement, ARTIFACT)["throughput_per_s"] == pytest.approx(1000.0)
    # below its floor: 1 - value / limit > 0; above it: <= 0
    below = constraint_values(Budgets(throughput_per_s=1250.0), measurement, ARTIFACT)
    above = constraint_values(Budgets(throughput_per_s=800.0), measurement, ARTIFACT)
    assert below == pytest.approx({"throughput_per_s": 0.2})
    assert above == pytest.approx({"throughput_per_s": -0.25})
    assert constraint_values(Budgets(throughput_per_s=1000.0), measurement,
                             ARTIFACT)["throughput_per_s"] == pytest.approx(0.0)  # met exactly
    # a value of 0 is as far below as it gets, never an infinite constraint
    assert throughput.constraint(0.0, 500.0) == 1.0
    assert throughput.met(1000.0, 800.0) and not throughput.met(1000.0, 1250.0)
    assert describe_excess(below) == "throughput_per_s under its floor by 20%"
    assert budget_text("throughput_per_s", 800.0, True) == "throughput_per_s >= 800"
    assert budget_text("latency_p90_ms", 2.0, False) == "latency_p90_ms <= 2"
    assert metrics.directions(["accuracy", "throughput_per_s"]) == ["maximize", "maximize"]


def test_registering_is_checked():
    with pytest.raises(ValueError, match="registered already"):
        metrics.register(Metric("latency_p90_ms", "ms", False, "measurement", "x", "x",
                                field="latency_ms_p90"))
    with pytest.raises(ValueError, match="source 'device' is not one of measurement, artifact"):
        Metric("x_ms", "ms", False, "device", "x", "x", field="x")
    with pytest.raises(ValueError, match="give 'read' or 'field'"):
        Metric("x_ms", "ms", False, "measurement", "x", "x")
    with pytest.raises(ValueError, match="lower-case letters"):
        Metric("Latency", "ms", False, "measurement", "x", "x", field="x")
    with pytest.raises(ValueError, match="budgets on one are not supported"):
        Metric("bleu", "", True, "evaluation", "x", "x")
    with pytest.raises(ValueError, match="comes from the measurement or the bytes"):
        metrics.register(Metric("bleu", "", True, "evaluation", "x", "x", budgetable=False))
    assert metrics.get("latency_p90_ms").screenable and not metrics.get("accuracy").screenable
    with pytest.raises(ValueError, match="built-in"):
        metrics.unregister("latency_p90_ms")
    with pytest.raises(ConfigError, match="unknown metric 'tokens_per_s'; registered metrics: "
                                          "accuracy, latency_p50_ms"):
        metrics.get("tokens_per_s")


def installed_package(tmp_path, monkeypatch, module_text: str) -> Path:
    """A package 'mymetrics' on the path whose entry point ttft = mymetrics:TTFT is in the
    group hwnas.metrics (its dist-info folder, as pip writes it), the registry to load anew."""
    (tmp_path / "mymetrics.py").write_text(module_text)
    info = tmp_path / "mymetrics-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mymetrics\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hwnas.metrics]\nttft = mymetrics:TTFT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(metrics, "_plugins_loaded", False)
    return info


def test_an_installed_package_registers_a_metric_through_its_entry_point(tmp_path, monkeypatch):
    """The plug-in way for a real run: an entry point of the group hwnas.metrics."""
    installed_package(tmp_path, monkeypatch, textwrap.dedent("""\
        from hwnas.metrics import Metric

        TTFT = Metric("ttft_ms", "ms", False, "measurement", "time to first token (ms)",
                      "TTFT ms", read=lambda m, a, basis: m.latency_ms_p50 * 2)
        """))
    try:
        assert metrics.get("ttft_ms").label == "time to first token (ms)"
        assert "ttft_ms" in Budgets(ttft_ms=5.0).limits()
    finally:
        metrics.unregister("ttft_ms")
        sys.modules.pop("mymetrics", None)


@pytest.mark.parametrize("module_text, error", [
    ("raise RuntimeError('no licence')\n",
     r"metric plug-in ttft \(mymetrics:TTFT\) cannot be loaded: RuntimeError: no licence"),
    ("TTFT = 3\n", r"metric plug-in ttft \(mymetrics:TTFT\) is not an hwnas.metrics.Metric"),
    ("from hwnas.metrics import Metric\nTTFT = Metric('accuracy', '', True, 'measurement', "
     "'a', 'a', field='x')\n",
     r"metric plug-in ttft \(mymetrics:TTFT\): a metric named 'accuracy' is registered"),
])
def test_a_metric_plug_in_that_fails_is_one_error_said_every_time(tmp_path, monkeypatch,
                                                                   module_text, error):
    info = installed_package(tmp_path, monkeypatch, module_text)
    try:
        for _again in range(2):  # said again until mended, not skipped after the first time
            with pytest.raises(ConfigError, match=error):
                metrics.names()
    finally:
        sys.modules.pop("mymetrics", None)
    monkeypatch.syspath_prepend(str(tmp_path / "gone"))  # mended: the package removed
    (info / "entry_points.txt").unlink()
    (info / "METADATA").unlink()
    info.rmdir()
    assert "accuracy" in metrics.names()


def test_a_plug_in_metric_is_read_from_the_measurement_field_it_names(throughput):
    measurement = Measurement.from_agent("dev", REPORT)
    artifact = Artifact("", "b" * 64, 1_000_000, (), 1)
    assert metrics.values(measurement, artifact, wanted=["throughput_per_s", "model_size_mb"]) \
        == pytest.approx({"throughput_per_s": 1000.0, "model_size_mb": 1.0})
