"""Sampling a power source in a background thread during the timed phase, and the summary.

Energy comes from the source's cumulative counter where it has one (exact), otherwise from
the mean of the samples times the elapsed time. Figures from fewer than the minimum
number of samples are not reported: the timed phase is extended until there are enough.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

from hwnas_agent.power import PowerSample, PowerSource


class PowerSampler:
    def __init__(self, source: PowerSource, rate_hz: Optional[float] = None) -> None:
        self.source = source
        self.period_s = 1.0 / (rate_hz or source.rate_hz)
        self.samples: List[PowerSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "PowerSampler":
        self.samples, self.errors = [], 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="power", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_time = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append(self.source.read())
            except Exception:
                self.errors += 1
            next_time += self.period_s
            self._stop.wait(max(0.0, next_time - time.monotonic()))

    def count(self) -> int:
        return len(self.samples)

    def stop(self) -> List[PowerSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return list(self.samples)


def mean_watts(samples: List[PowerSample]) -> Optional[float]:
    """Average power; from the energy counter when the source has one."""
    with_energy = [s for s in samples if s.energy_j is not None]
    if len(with_energy) >= 2 and with_energy[-1].time_s > with_energy[0].time_s:
        first, last = with_energy[0], with_energy[-1]
        return (last.energy_j - first.energy_j) / (last.time_s - first.time_s)  # type: ignore[operator]
    watts = [s.watts for s in samples if s.watts is not None]
    return sum(watts) / len(watts) if watts else None


def summarize(source: PowerSource, idle: List[PowerSample], timed: List[PowerSample],
              timed_seconds: float, inferences: int, min_samples: int) -> Dict[str, Any]:
    valid = [s for s in timed if s.watts is not None or s.energy_j is not None]
    result: Dict[str, Any] = dict(source.describe(), samples=len(valid), idle_samples=len(idle),
                                  min_samples=min_samples)
    if len(valid) < min_samples:
        result["error"] = ("only %d samples in the timed phase (at least %d needed): no energy "
                           "figure is reported" % (len(valid), min_samples))
        return result
    mean = mean_watts(valid)
    idle_w = mean_watts(idle)
    peaks = [s.watts for s in valid if s.watts is not None]
    result.update({
        "mean_w": mean,
        "peak_w": max(peaks) if peaks else None,
        "idle_w": idle_w,
        "energy_mj_per_inference": mean * timed_seconds / inferences * 1000.0
        if mean is not None and inferences else None,
        "energy_mj_per_inference_above_idle": (mean - idle_w) * timed_seconds / inferences * 1000.0
        if mean is not None and idle_w is not None and inferences else None,
    })
    return result
