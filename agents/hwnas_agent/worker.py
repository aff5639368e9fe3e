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
from typing import Any, Dict

from hwnas_agent import facts, runtimes
from hwnas_agent.measure import run_timed
from hwnas_agent.protocol import MeasureRequest
from hwnas_agent.storage import write_json_atomic


def measure_file(model_path: str, request: MeasureRequest) -> Dict[str, Any]:
    started = time.perf_counter()
    before = facts.provenance()
    load_start = time.perf_counter()
    model = runtimes.load(model_path, request)
    load_seconds = time.perf_counter() - load_start
    result = run_timed(model.run_once, request)
    result.update({
        "model_sha256": request.model_sha256,
        "batch_size": request.batch_size,
        "inputs": model.inputs,
        "runtime": model.describe(),
        "session_load_seconds": load_seconds,
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "power": None,
        "provenance": {"before": before, "after": facts.provenance()},
        "request": request.to_dict(),
    })
    result["worker_seconds"] = time.perf_counter() - started
    return result


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
