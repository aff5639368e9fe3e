"""Measurement methodology: warm-up, timed rounds, statistics.

Warm-up runs until both a minimum number of iterations and a minimum time have passed
(TFLite benchmark_model / trtexec practice). The timed phase is split into rounds, each
with its share of the minimum iterations and seconds, so that a drift (thermal, another
process) shows up as a spread between round medians instead of hiding in one average.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def run_timed(run_once: Callable[[], None], request: Any,
              clock: Callable[[], int] = time.perf_counter_ns,
              before_timed: Optional[Callable[[], None]] = None,
              enough: Optional[Callable[[], bool]] = None,
              after_round: Optional[Callable[[], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Warm up, then time single inferences in rounds; returns latencies and statistics.

    ``before_timed`` runs between warm-up and the timed phase (a power sampler starts
    there); after the configured rounds, further rounds run while ``enough()`` is false;
    ``after_round`` returns what to record with each round (clocks, temperatures).
    """
    warmup_start = clock()
    warmup_deadline = warmup_start + int(request.warmup_seconds * 1e9)
    warmup_iterations = 0
    while warmup_iterations < request.warmup_iterations or clock() < warmup_deadline:
        run_once()
        warmup_iterations += 1
    warmup_seconds = (clock() - warmup_start) / 1e9

    per_round_iterations = int(math.ceil(request.min_iterations / float(request.rounds)))
    per_round_ns = int(request.min_seconds * 1e9 / request.rounds)
    latencies_ms: List[float] = []
    rounds: List[Dict[str, Any]] = []
    if before_timed is not None:
        before_timed()
    timed_start = clock()
    while len(rounds) < request.rounds or (enough is not None and not enough()):
        round_ms: List[float] = []
        round_start = clock()
        while len(round_ms) < per_round_iterations or clock() - round_start < per_round_ns:
            begin = clock()
            run_once()
            round_ms.append((clock() - begin) / 1e6)
        record = {"iterations": len(round_ms), "p50_ms": float(np.median(round_ms))}
        if after_round is not None:
            record.update(after_round())
        rounds.append(record)
        latencies_ms.extend(round_ms)
    timed_seconds = (clock() - timed_start) / 1e9

    stats = latency_statistics(latencies_ms)
    round_medians = [r["p50_ms"] for r in rounds]
    spread = (max(round_medians) - min(round_medians)) / stats["p50"] if stats["p50"] > 0 else 0.0
    return {
        "latency_ms": stats,
        "iterations": len(latencies_ms),
        "timed_seconds": timed_seconds,
        "warmup_iterations": warmup_iterations,
        "warmup_seconds": warmup_seconds,
        "rounds": rounds,
        "round_p50_spread": spread,
        "unstable": bool(stats["cv"] > request.unstable_cv),
        "throughput_per_s": len(latencies_ms) * request.batch_size / timed_seconds
        if timed_seconds > 0 else 0.0,
    }
