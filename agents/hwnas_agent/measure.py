"""Measurement methodology: warm-up, timed rounds, statistics.

Warm-up runs until both a minimum number of iterations and a minimum time have passed
(TFLite benchmark_model / trtexec practice). The timed phase is split into rounds, each
with its share of the minimum iterations and seconds, so that a drift (thermal, another
process) shows up as a spread between round medians instead of hiding in one average.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def median_ci95(sorted_ms: Sequence[float]) -> List[float]:
    """Distribution-free 95% confidence interval of the median (order statistics).

    Ranks n/2 -/+ 1.96*sqrt(n)/2, the normal approximation of the binomial; it assumes
    independent samples, which back-to-back inferences only approximate (see the rounds).
    """
    n = len(sorted_ms)
    half_width = 1.959964 * math.sqrt(n) / 2.0
    lower = max(0, int(math.floor(n / 2.0 - half_width)))
    upper = min(n - 1, int(math.ceil(n / 2.0 + half_width)) - 1)
    return [float(sorted_ms[lower]), float(sorted_ms[max(lower, upper)])]


def latency_statistics(latencies_ms: Sequence[float]) -> Dict[str, Any]:
    values = np.asarray(latencies_ms, dtype=np.float64)
    ordered = np.sort(values)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {
        "p50": float(np.percentile(ordered, 50)),
        "p90": float(np.percentile(ordered, 90)),
        "p99": float(np.percentile(ordered, 99)),
        "mean": mean,
        "std": std,
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "cv": std / mean if mean > 0 else 0.0,
        "ci95_p50": median_ci95(ordered),
    }


@dataclasses.dataclass
class TimedPhases:
    """What timed_rounds ran: each timed call's milliseconds and what it returned, the rounds'
    records, and the warm-up's and timed phase's extent."""

    samples: List[Tuple[float, Any]]
    rounds: List[Dict[str, Any]]
    warmup_iterations: int
    warmup_seconds: float
    timed_seconds: float


def timed_rounds(run_once: Callable[[], Any], request: Any,
                 clock: Callable[[], int] = time.perf_counter_ns,
                 before_timed: Optional[Callable[[], None]] = None,
                 enough: Optional[Callable[[], bool]] = None,
                 after_round: Optional[Callable[[], Dict[str, Any]]] = None,
                 describe_round: Optional[Callable[[List[Any]], Dict[str, Any]]] = None
                 ) -> TimedPhases:
    """The loop every methodology shares: warm up, then time single calls in rounds.

    ``before_timed`` runs between warm-up and the timed phase (a power sampler starts
    there); after the configured rounds, further rounds run while ``enough()`` is false;
    ``describe_round`` summarises what a round's calls returned, ``after_round`` what to
    record with each round besides (clocks, temperatures)."""
    warmup_start = clock()
    warmup_deadline = warmup_start + int(request.warmup_seconds * 1e9)
    warmup_iterations = 0
    while warmup_iterations < request.warmup_iterations or clock() < warmup_deadline:
        run_once()
        warmup_iterations += 1
    warmup_seconds = (clock() - warmup_start) / 1e9

    per_round_iterations = int(math.ceil(request.min_iterations / float(request.rounds)))
    per_round_ns = int(request.min_seconds * 1e9 / request.rounds)
    samples: List[Tuple[float, Any]] = []
    rounds: List[Dict[str, Any]] = []
    if before_timed is not None:
        before_timed()
    timed_start = clock()
    while len(rounds) < request.rounds or (enough is not None and not enough()):
        this_round: List[Tuple[float, Any]] = []
        round_start = clock()
        while len(this_round) < per_round_iterations or clock() - round_start < per_round_ns:
            begin = clock()
            value = run_once()
            this_round.append(((clock() - begin) / 1e6, value))
        record = {"iterations": len(this_round),
                  "p50_ms": float(np.median([ms for ms, _ in this_round]))}
        if describe_round is not None:
            record.update(describe_round([value for _, value in this_round]))
        if after_round is not None:
            record.update(after_round())
        rounds.append(record)
        samples.extend(this_round)
    return TimedPhases(samples, rounds, warmup_iterations, warmup_seconds,
                       (clock() - timed_start) / 1e9)


def run_timed(run_once: Callable[[], None], request: Any,
              clock: Callable[[], int] = time.perf_counter_ns,
              before_timed: Optional[Callable[[], None]] = None,
              enough: Optional[Callable[[], bool]] = None,
              after_round: Optional[Callable[[], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Warm up, then time single inferences in rounds; returns latencies and statistics
    (the hooks: timed_rounds')."""
    phases = timed_rounds(run_once, request, clock, before_timed, enough, after_round)
    latencies_ms = [ms for ms, _ in phases.samples]
    stats = latency_statistics(latencies_ms)
    round_medians = [r["p50_ms"] for r in phases.rounds]
    spread = (max(round_medians) - min(round_medians)) / stats["p50"] if stats["p50"] > 0 else 0.0
    return {
        "latency_ms": stats,
        "iterations": len(latencies_ms),
        "timed_seconds": phases.timed_seconds,
        "warmup_iterations": phases.warmup_iterations,
        "warmup_seconds": phases.warmup_seconds,
        "rounds": phases.rounds,
        "round_p50_spread": spread,
        "unstable": bool(stats["cv"] > request.unstable_cv),
        "throughput_per_s": len(latencies_ms) * request.batch_size / phases.timed_seconds
        if phases.timed_seconds > 0 else 0.0,
    }
