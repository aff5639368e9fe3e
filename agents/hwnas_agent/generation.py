"""Generation methodology (runtime genai): warm-up, timed generation rounds, statistics.

One generation round, as llama-bench (``-p``/``-n``) and onnxruntime-genai's benchmark_e2e.py
time it: a prompt of P token ids is appended, then G tokens are produced greedily (no early
stop at EOS: min_length is the whole length). Its time to first token (TTFT) runs from the
prompt's append to the first token produced (prefill tokens/s = P / TTFT); its decode phase
from there to the G-th token (decode tokens/s = (G - 1) / decode time). Creating the
generator (the KV cache's allocation) is outside both, as in benchmark_e2e.py.

The loop is measure.run_timed's, a whole round standing for one inference: warm-up until
both warmup_iterations rounds and warmup_seconds have passed; then request.rounds groups of
rounds, each with its share of min_iterations and min_seconds, extended while ``enough()``
(the power sampler) is false. Every decode window's monotonic start and end is kept, so that
power can be taken over the decode phases alone (power/sampler.decode_power).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from hwnas_agent.measure import latency_statistics, timed_rounds

# (ttft ns, decode ns, decode window's monotonic start s, end s) of one round
Round = Tuple[int, int, float, float]


def run_generation(one_round: Callable[[], Round], request: Any,
                   clock: Callable[[], int] = time.perf_counter_ns,
                   before_timed: Optional[Callable[[], None]] = None,
                   enough: Optional[Callable[[], bool]] = None,
                   after_round: Optional[Callable[[], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Warm up, then time generation rounds; the result has run_timed's keys (a round is
    one iteration: ``latency_ms`` is the whole round's) and ``generation``; the decode
    windows come in ``decode_windows`` (for the power summary, not the report)."""
    def describe_round(group: List[Round]) -> Dict[str, Any]:
        return {"decode_tokens_per_s_p50": float(np.median(
                    [_decode_rate(r, request.generate_tokens) for r in group])),
                "ttft_ms_p50": float(np.median([r[0] / 1e6 for r in group]))}

    phases = timed_rounds(one_round, request, clock, before_timed, enough, after_round,
                          describe_round)
    measured: List[Round] = [value for _, value in phases.samples]
    totals_ms = [ms for ms, _ in phases.samples]
    groups = phases.rounds
    timed_seconds = phases.timed_seconds
    stats = latency_statistics(totals_ms)
    generation = generation_statistics(measured, request.prompt_tokens, request.generate_tokens)
    medians = [g["decode_tokens_per_s_p50"] for g in groups]
    decode_p50 = generation["decode_tokens_per_s"]["p50"]
    spread = (max(medians) - min(medians)) / decode_p50 if decode_p50 > 0 else 0.0
    return {
        "latency_ms": stats,
        "iterations": len(measured),
        "timed_seconds": timed_seconds,
        "warmup_iterations": phases.warmup_iterations,
        "warmup_seconds": phases.warmup_seconds,
        "rounds": groups,
        "round_p50_spread": spread,
        "unstable": bool(generation["decode_tokens_per_s"]["cv"] > request.unstable_cv),
        "throughput_per_s": len(measured) / timed_seconds if timed_seconds > 0 else 0.0,
        "generation": generation,
        "decode_windows": [[r[2], r[3]] for r in measured],
    }


def _decode_rate(measured: Round, generate_tokens: int) -> float:
    return (generate_tokens - 1) / (measured[1] / 1e9) if measured[1] > 0 else 0.0


def generation_statistics(measured: List[Round], prompt_tokens: int, generate_tokens: int
                          ) -> Dict[str, Any]:
    """TTFT (ms), prefill and decode tokens/s of the timed rounds: each a latency_statistics
    (p50, p90, p99, mean, std, cv, min, max, ci95_p50: the median's distribution-free 95%
    interval)."""
    ttft_ms = [r[0] / 1e6 for r in measured]
    prefill = [prompt_tokens / (r[0] / 1e9) for r in measured if r[0] > 0]
    decode = [_decode_rate(r, generate_tokens) for r in measured]
    decode_seconds = sum(r[1] for r in measured) / 1e9
    return {
        "methodology": "prompt of prompt_tokens random token ids (fixed seed) appended, then "
                       "generate_tokens greedy tokens, no early stop; TTFT = append + first "
                       "token; decode = the other generate_tokens - 1",
        "prompt_tokens": prompt_tokens,
        "generate_tokens": generate_tokens,
        "rounds": len(measured),
        "ttft_ms": latency_statistics(ttft_ms),
        "prefill_tokens_per_s": latency_statistics(prefill),
        "decode_tokens_per_s": latency_statistics(decode),
        "decode_seconds": decode_seconds,
        "decode_tokens": len(measured) * (generate_tokens - 1),
    }
