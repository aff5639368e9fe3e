import time
from types import SimpleNamespace

import numpy as np
import pytest

from hwnas_agent.measure import latency_statistics, median_ci95, run_timed


def test_statistics_match_numpy_and_flag_spread():
    values = list(np.linspace(1.0, 2.0, 101))
    stats = latency_statistics(values)
    assert stats["p50"] == pytest.approx(1.5)
    assert stats["p90"] == pytest.approx(1.9)
    assert stats["min"] == 1.0 and stats["max"] == 2.0
    assert stats["cv"] == pytest.approx(np.std(values, ddof=1) / np.mean(values))
    low, high = stats["ci95_p50"]
    assert low < 1.5 < high


def test_median_ci_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    narrow = median_ci95(np.sort(rng.normal(10, 1, 10000)))
    wide = median_ci95(np.sort(rng.normal(10, 1, 100)))
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3


def _request(**overrides):
    values = dict(warmup_iterations=3, warmup_seconds=0.0, min_iterations=20, min_seconds=0.0,
                  rounds=4, unstable_cv=0.1, batch_size=1)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_timed_phase_honours_minimum_iterations_and_rounds():
    calls = []
    result = run_timed(lambda: calls.append(1), _request())
    assert result["warmup_iterations"] == 3
    assert result["iterations"] == 20 and len(result["rounds"]) == 4
    assert len(calls) == 23


def test_timed_phase_honours_minimum_seconds():
    result = run_timed(lambda: time.sleep(0.002), _request(min_iterations=1, min_seconds=0.2))
    assert result["timed_seconds"] >= 0.2
    assert result["iterations"] >= 50  # 0.2 s of 2 ms calls, at least
    assert result["latency_ms"]["p50"] >= 2.0


def test_unstable_flag_set_for_noisy_runs():
    durations = iter([0.001, 0.01] * 100)
    result = run_timed(lambda: time.sleep(next(durations)), _request(warmup_iterations=0))
    assert result["unstable"] is True
