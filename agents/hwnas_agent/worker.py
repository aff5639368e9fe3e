"""One job in its own process, so that a runtime that crashes or hangs cannot take the
agent down. ``python -m hwnas_agent.worker measure JOB_DIR MODEL`` writes JOB_DIR/result.json;
``python -m hwnas_agent.worker inspect MODEL`` prints the model's signature as JSON.
A failure writes {"error": {...}} and exits 3.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Dict, Optional, Tuple

from hwnas_agent import facts, power, runtimes, thermal
from hwnas_agent.measure import run_timed
from hwnas_agent.power.sampler import PowerSampler, summarize
from hwnas_agent.protocol import MeasureRequest
from hwnas_agent.storage import write_json_atomic


def measure_file(model_path: str, request: MeasureRequest) -> Dict[str, Any]:
    started = time.perf_counter()
    if request.cpu_affinity and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, request.cpu_affinity)
    cooldown = None
    if request.cooldown_below_c is not None:
        cooldown = thermal.cool_down(request.cooldown_below_c, request.cooldown_timeout_s)
    before = facts.provenance()
    load_start = time.perf_counter()
    model = runtimes.load(model_path, request)
    load_seconds = time.perf_counter() - load_start
    start_probe = thermal.round_probe()
    source = None
    if request.power_source != "none":
        source = power.open_source(request.power_source, request.power_options)
    try:
        result, power_result = _timed_with_power(model, request, source)
    finally:
        if source is not None:
            source.close()
    result.update({
        "thermal": dict(thermal.throttling(result["rounds"], start_probe, request.thermal_rise_c,
                                           request.clock_drop), cooldown=cooldown),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "model_sha256": request.model_sha256,
        "batch_size": request.batch_size,
        "inputs": model.inputs,
        "runtime": model.describe(),
        "session_load_seconds": load_seconds,
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "power": power_result,
        "provenance": {"before": before, "after": facts.provenance()},
        "request": request.to_dict(),
    })
    result["worker_seconds"] = time.perf_counter() - started
    return result


def _timed_with_power(model: Any, request: MeasureRequest,
                      source: Optional[power.PowerSource]) -> Tuple[Dict[str, Any], Any]:
    if source is None:
        return run_timed(model.run_once, request, after_round=thermal.round_probe), None
    # idle baseline: the model is loaded, nothing runs
    idle_sampler = PowerSampler(source).start()
    time.sleep(request.idle_seconds)
    idle = idle_sampler.stop()
    sampler = PowerSampler(source)
    result = run_timed(model.run_once, request, before_timed=sampler.start,
                       enough=lambda: sampler.enough(request.power_min_samples),
                       after_round=thermal.round_probe)
    timed = sampler.stop()
    # raises PowerUnavailable (the job fails with the sensor's reason) rather than report
    # a measurement without the power it was asked for
    return result, summarize(source, idle, timed, result["timed_seconds"], result["iterations"],
                             request.power_min_samples)


def main(argv: Any = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["measure"] and len(args) == 3:
            job_dir, model_path = args[1], args[2]
            with open(os.path.join(job_dir, "request.json")) as handle:
                request = MeasureRequest.from_dict(json.load(handle))
            result = measure_file(model_path, request)
            write_json_atomic(os.path.join(job_dir, "result.json"), result)
            return 0
        if args[:1] == ["inspect"] and len(args) == 2:
            from hwnas_agent.runtimes import onnxruntime as ort_runtime

            print(json.dumps(ort_runtime.inspect(args[1])))
            return 0
        print(json.dumps({"error": {"type": "usage", "message": "usage: worker measure JOB_DIR MODEL"
                                    " | worker inspect MODEL"}}))
        return 2
    except Exception as exc:  # reported to the server, which keeps serving
        payload = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        if args[:1] == ["measure"] and len(args) == 3:
            write_json_atomic(os.path.join(args[1], "error.json"), payload)
        print(json.dumps(payload))
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
