"""Sampling a power source in a background thread, one phase at a time, and the summary.

A phase's window is edged by readings: one taken when sampling starts, and one taken at or
after the moment it stops (a line meter: its next line), so the sampled window covers the
whole phase. Times come from the monotonic clock; a reading seen twice (a line meter polled
faster than it prints) counts once.

Energy over the window is computed two ways where possible: the trapezoidal integral of
the watts samples, and the difference of the sensor's own cumulative counter (RAPL, hwmon
energy, NVML). The counter is the figure where there is one (the hardware integrates every
microsecond; samples only see their instants); the trapezoid is reported beside it.

No figure is ever made up: a sensor error in a phase, fewer samples than required, or a
window that does not cover the phase raises PowerUnavailable naming the sensor and why, and
the measurement fails.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hwnas_agent.power import PowerSample, PowerSource

MAX_ERRORS_KEPT = 5


class PowerUnavailable(Exception):
    """A measurement asked for power and has no figure it can stand behind."""


class Window:
    """The readings of one phase and the errors met, with the phase's monotonic start/end."""

    __slots__ = ("samples", "errors", "started_s", "stopped_s")

    def __init__(self, samples: List[PowerSample], errors: List[str], started_s: float,
                 stopped_s: float) -> None:
        self.samples, self.errors = samples, errors
        self.started_s, self.stopped_s = started_s, stopped_s


class PowerSampler:
    def __init__(self, source: PowerSource, rate_hz: Optional[float] = None) -> None:
        self.source = source
        self.period_s = 1.0 / (rate_hz or source.rate_hz)
        self.samples: List[PowerSample] = []
        self.errors: List[str] = []
        self.error_count = 0
        self.started_s = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "PowerSampler":
        self.samples, self.errors, self.error_count = [], [], 0
        self._stop.clear()
        self.started_s = time.monotonic()
        self._take()  # the window's start edge
        self._thread = threading.Thread(target=self._run, name="power", daemon=True)
        self._thread.start()
        return self

    def _take(self) -> None:
        try:
            sample = self.source.read()
        except Exception as exc:  # any failure of the sensor is recorded, and fails the phase
            self.error_count += 1
            message = str(exc) or repr(exc)
            if message not in self.errors and len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(message)
            return
        if self.samples and sample.time_s <= self.samples[-1].time_s:
            return  # the same reading again
        self.samples.append(sample)

    def _run(self) -> None:
        next_time = time.monotonic() + self.period_s
        while not self._stop.wait(max(0.0, next_time - time.monotonic())):
            self._take()
            next_time += self.period_s

    def count(self) -> int:
        return len(self.samples)

    def enough(self, min_samples: int) -> bool:
        """Stop extending the phase: enough samples, or the sensor failed (no point waiting)."""
        return self.error_count > 0 or self.count() >= min_samples

    def stop(self) -> Window:
        stopped = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # the end edge: a reading taken at or after the end of the phase
        deadline = stopped + max(5 * self.period_s, 2.0)
        while self.error_count == 0:
            self._take()
            if self.samples and self.samples[-1].time_s >= stopped:
                break
            if time.monotonic() > deadline:
                self.error_count += 1
                self.errors.append("no reading at or after the end of the phase within %.1f s"
                                   % (deadline - stopped))
                break
            time.sleep(min(self.period_s / 4.0, 0.05))
        if self.error_count > 1:
            self.errors.append("%d failed reads in all" % self.error_count)
        return Window(list(self.samples), list(self.errors), self.started_s, stopped)


def trapezoid(samples: List[PowerSample]) -> Optional[Tuple[float, float, float, int]]:
    """(joules, first time, last time, points) of the trapezoidal integral of the watts."""
    points = [(s.time_s, s.watts) for s in samples if s.watts is not None]
    if len(points) < 2:
        return None
    energy = sum((t1 - t0) * (w0 + w1) / 2.0 for (t0, w0), (t1, w1) in zip(points, points[1:]))
    return energy, points[0][0], points[-1][0], len(points)


def counter(samples: List[PowerSample]) -> Optional[Tuple[float, float, float, int]]:
    """(joules, first time, last time, points) from the sensor's cumulative energy counter."""
    points = [s for s in samples if s.energy_j is not None]
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    return last.energy_j - first.energy_j, first.time_s, last.time_s, len(points)  # type: ignore[operator]


def _integral(result: Optional[Tuple[float, float, float, int]]) -> Optional[Dict[str, Any]]:
    if result is None or result[2] <= result[1]:
        return None
    energy, first, last, points = result
    return {"energy_j": energy, "mean_w": energy / (last - first), "window_s": last - first,
            "samples": points, "first_s": first, "last_s": last}


def phase_power(source: PowerSource, window: Window, min_samples: int, phase: str
                ) -> Dict[str, Any]:
    """The figure of one phase (counter where the source has one, else trapezoid) and both
    integrals; raises PowerUnavailable when there is no figure to stand behind."""
    label = "power source %r (%s)" % (source.kind, source.figure or source.covers)
    if window.errors:
        raise PowerUnavailable("%s failed during the %s phase: %s"
                               % (label, phase, "; ".join(window.errors)))
    by_trapezoid = _integral(trapezoid(window.samples))
    by_counter = _integral(counter(window.samples)) if source.has_energy_counter else None
    figure, method = (by_counter, "counter") if by_counter else (by_trapezoid, "trapezoid")
    if figure is None or figure["samples"] < min_samples:
        raise PowerUnavailable("%s gave %d usable readings in the %s phase (at least %d needed): "
                               "no power figure" % (label, figure["samples"] if figure else
                                                    len(window.samples), phase, min_samples))
    # the figure's window must span the phase, give or take one sampling period
    slack = 1.0 / source.rate_hz + 0.01
    if figure["first_s"] > window.started_s + slack or figure["last_s"] < window.stopped_s - slack:
        raise PowerUnavailable("%s: the readings of the %s phase span %.3f..%.3f s but the phase "
                               "ran %.3f..%.3f s: the window does not cover it"
                               % (label, phase, figure["first_s"], figure["last_s"],
                                  window.started_s, window.stopped_s))
    times = [s.time_s for s in window.samples]
    return {"method": method, "figure": figure, "trapezoid": by_trapezoid, "counter": by_counter,
            "max_gap_s": max((b - a for a, b in zip(times, times[1:])), default=0.0)}


def rails_mean_w(samples: List[PowerSample]) -> Dict[str, float]:
    """Each rail or domain's trapezoidal mean over the window (for comparison)."""
    names = sorted({name for s in samples for name in s.rails_w})
    means = {}
    for name in names:
        integral = _integral(trapezoid([PowerSample(s.rails_w.get(name), time_s=s.time_s)
                                        for s in samples if name in s.rails_w]))
        if integral is not None:
            means[name] = integral["mean_w"]
    return means


def _public(integral: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return None if integral is None else {k: integral[k] for k in ("energy_j", "mean_w",
                                                                   "window_s", "samples")}


def summarize(source: PowerSource, idle: Window, timed: Window, timed_seconds: float,
              inferences: int, min_samples: int) -> Dict[str, Any]:
    """What the agent reports for power (see docs/power.md for the schema); raises
    PowerUnavailable rather than report a figure it does not have."""
    if inferences <= 0 or timed_seconds <= 0:
        raise PowerUnavailable("no timed inferences to divide the energy by")
    busy = phase_power(source, timed, min_samples, "timed")
    rest = phase_power(source, idle, 2, "idle")
    mean_w = busy["figure"]["mean_w"]
    idle_w = rest["figure"]["mean_w"]
    peaks = [s.watts for s in timed.samples if s.watts is not None]
    per_inference = timed_seconds / inferences * 1000.0  # mJ per W
    trapezoid_w = busy["trapezoid"]["mean_w"] if busy["trapezoid"] else None
    counter_w = busy["counter"]["mean_w"] if busy["counter"] else None
    result: Dict[str, Any] = dict(source.describe())
    result.update({
        "clock": "monotonic",
        "method": busy["method"],
        "samples": busy["figure"]["samples"],
        "min_samples": min_samples,
        "window_s": busy["figure"]["window_s"],
        "achieved_rate_hz": (busy["figure"]["samples"] - 1) / busy["figure"]["window_s"],
        "max_gap_s": busy["max_gap_s"],
        "timed_seconds": timed_seconds,
        "inferences": inferences,
        "mean_w": mean_w,
        "peak_w": max(peaks) if peaks else None,
        "energy_j": mean_w * timed_seconds,
        "energy_mj_per_inference": mean_w * per_inference,
        "idle_w": idle_w,
        "idle_samples": rest["figure"]["samples"],
        "idle_window_s": rest["figure"]["window_s"],
        "idle_method": rest["method"],
        "energy_mj_per_inference_above_idle": (mean_w - idle_w) * per_inference,
        "trapezoid": _public(busy["trapezoid"]),
        "counter": _public(busy["counter"]),
        "counter_vs_trapezoid": (trapezoid_w - counter_w) / counter_w
        if trapezoid_w is not None and counter_w else None,
        "rails_w": rails_mean_w(timed.samples),
    })
    return result


def _interpolate(points: List[Tuple[float, float]], at: float) -> float:
    """The piecewise-linear value of (time, value) points at ``at`` (inside their span)."""
    low, high = 0, len(points) - 1
    while high - low > 1:
        middle = (low + high) // 2
        if points[middle][0] <= at:
            low = middle
        else:
            high = middle
    (t0, v0), (t1, v1) = points[low], points[high]
    return v0 if t1 <= t0 else v0 + (v1 - v0) * (at - t0) / (t1 - t0)


def decode_power(source: PowerSource, timed: Window, windows: List[List[float]],
                 tokens: int) -> Dict[str, Any]:
    """Energy, mean and peak watts over the decode windows only (monotonic [start, end]
    pairs inside the timed phase) and the energy per generated token. The energy is the
    sensor's counter interpolated at each window's edges where it has one, else the
    trapezoid of the watts interpolated linearly at the edges; the peak is the highest
    watts read (or interpolated at an edge) inside a window. A window shorter than the
    sampling period is covered by interpolation only: ``samples_inside`` says how many
    readings fell inside the windows."""
    label = "power source %r (%s)" % (source.kind, source.figure or source.covers)
    watts = [(s.time_s, s.watts) for s in timed.samples if s.watts is not None]
    energy = [(s.time_s, s.energy_j) for s in timed.samples if s.energy_j is not None]
    use_counter = source.has_energy_counter and len(energy) >= 2
    points = energy if use_counter else watts
    if len(points) < 2 or not windows or tokens <= 0:
        raise PowerUnavailable("%s: no readings or no decode windows to take the decode power "
                               "from" % label)
    if windows[0][0] < points[0][0] or windows[-1][1] > points[-1][0]:
        raise PowerUnavailable("%s: the readings span %.3f..%.3f s but the decode windows "
                               "%.3f..%.3f s" % (label, points[0][0], points[-1][0],
                                                 windows[0][0], windows[-1][1]))
    joules, seconds, inside, peaks = 0.0, 0.0, 0, []  # type: float, float, int, List[float]
    for start, end in windows:
        seconds += end - start
        within = [(t, w) for t, w in watts if start < t < end]
        inside += len(within)
        edges = ([(start, _interpolate(watts, start))] + within + [(end, _interpolate(watts, end))]
                 if len(watts) >= 2 else within)
        peaks.extend(w for _, w in edges)
        if use_counter:
            joules += _interpolate(energy, end) - _interpolate(energy, start)
        else:
            joules += sum((t1 - t0) * (w0 + w1) / 2.0 for (t0, w0), (t1, w1)
                          in zip(edges, edges[1:]))
    if seconds <= 0:
        raise PowerUnavailable("%s: the decode windows last no time" % label)
    return {"method": "counter" if use_counter else "trapezoid", "windows": len(windows),
            "seconds": seconds, "tokens": tokens, "samples_inside": inside,
            "energy_j": joules, "mean_w": joules / seconds, "peak_w": max(peaks) if peaks else None,
            "energy_mj_per_token": joules * 1000.0 / tokens}
