"""One job in its own process, so that a runtime that crashes or hangs cannot take the
agent down. ``python -m hwnas_agent.worker measure JOB_DIR MODEL`` writes JOB_DIR/result.json;
``python -m hwnas_agent.worker inspect MODEL`` prints the model's signature as JSON.
A failure writes {"error": {...}} and exits 3; a runtime's message goes there without the
tensor values it may print (wire_text), its full text to stderr, the device's own log.

Every model is checked before a runtime opens it (onnx_refs): a stored model reads no file
but itself and, for a model of several files, the other files of its manifest
(``--data-files``), whatever the onnxruntime installed here would allow.

Started by the agent only, one worker at a time: ``--parent-pid`` (die with the agent),
``--memory-limit-bytes`` (RLIMIT_DATA: the agent's whole worker budget),
``--power-source`` (the configured source the job named, as JSON), ``--data-files`` (JSON
list) and ``--cache-dir`` (where a runtime keeps what it builds: TensorRT engines).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any, Dict, Optional, Sequence, Tuple

from hwnas_agent import emulation, facts, lifeline, onnx_refs, power, runtimes, thermal
from hwnas_agent.config import PowerSourceConfig
from hwnas_agent.power.sampler import PowerSampler, decode_power, summarize
from hwnas_agent.protocol import MeasureRequest
from hwnas_agent.storage import write_json_atomic
from hwnas_agent.wire_text import runtime_message, wire_error


def check_stored_model(model_path: str, data_files: Sequence[str] = ()) -> None:
    """ModelRefused unless the model reads no file but itself and its ``data_files`` (paths
    relative to its folder: the other files of its manifest). The store keeps a one-file
    model beside other models and their signatures, none of which is this model's, and a
    multi-file model in a folder of its own: an external-data reference to any other file,
    or out of the folder, is refused."""
    onnx_refs.check_external_data(model_path, data_files=tuple(data_files))


def measure_file(model_path: str, request: MeasureRequest,
                 power_source: Optional[PowerSourceConfig] = None,
                 cache_dir: Optional[str] = None) -> Dict[str, Any]:
    started = time.perf_counter()
    started_unix_time = time.time()
    if request.cpu_affinity and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, request.cpu_affinity)
    cooldown = None
    if request.cooldown_below_c is not None:
        cooldown = thermal.cool_down(request.cooldown_below_c, request.cooldown_timeout_s)
    before = facts.provenance()
    load_start = time.perf_counter()
    model = runtimes.load(model_path, request, cache_dir)
    load_seconds = time.perf_counter() - load_start
    start_probe = thermal.round_probe()
    source = None
    if power_source is not None:
        source = power.open_source(power_source.kind, power_source.options)
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
        # an agent under qemu-user: every runtime's figures are the emulator's
        "runtime": emulation.mark(model.describe()),
        "session_load_seconds": load_seconds,
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "power": power_result,
        "provenance": {"before": before, "after": facts.provenance()},
        "request": request.to_dict(),
    })
    if request.layer_profile:  # after the timed rounds and the peak memory: neither sees it
        result["layers"] = _layer_profile(model, request, result)
    result["worker_seconds"] = time.perf_counter() - started
    result["worker_started_unix_time"] = started_unix_time
    result["worker_finished_unix_time"] = time.time()
    return result


def _layer_profile(model: runtimes.LoadedModel, request: MeasureRequest,
                   result: Dict[str, Any]) -> Dict[str, Any]:
    """The runtime's per-node times; a profiled session that fails (a second session's
    memory, a build without the profiler) costs the layer profile, not the measurement."""
    try:
        return model.layer_profile(request.layer_profile_runs,
                                   (result.get("latency_ms") or {}).get("p50"))
    except Exception as exc:
        traceback.print_exc()
        return {"error": "the profiled runs failed, the measurement stands: %s"
                         % runtime_message(str(exc))}


def _timed_with_power(model: runtimes.LoadedModel, request: MeasureRequest,
                      source: Optional[power.PowerSource]) -> Tuple[Dict[str, Any], Any]:
    if source is None:
        result = model.timed_loop(request, after_round=thermal.round_probe)
        result.pop("decode_windows", None)
        return result, None
    # idle baseline: the model is loaded, nothing runs
    idle_sampler = PowerSampler(source).start()
    time.sleep(request.idle_seconds)
    idle = idle_sampler.stop()
    sampler = PowerSampler(source)
    result = model.timed_loop(request, before_timed=sampler.start,
                              enough=lambda: sampler.enough(request.power_min_samples),
                              after_round=thermal.round_probe)
    timed = sampler.stop()
    # raises PowerUnavailable (the job fails with the sensor's reason) rather than report
    # a measurement without the power it was asked for
    summary = summarize(source, idle, timed, result["timed_seconds"], result["iterations"],
                        request.power_min_samples)
    windows = result.pop("decode_windows", None)
    if windows:  # a generation: power over its decode phases alone, and per token
        summary["decode"] = decode_power(source, timed, windows,
                                         result["generation"]["decode_tokens"])
    return result, summary


class MemoryLimitExceeded(Exception):
    """The model needs more memory than the worker may take."""


def limit_memory(limit_bytes: int) -> None:
    """RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts private writable mappings, where
    onnxruntime's arena and glibc's large mallocs live, but not address space that is only
    reserved (CUDA reserves tens of GB of it) nor thread stacks, which RLIMIT_AS would count."""
    resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def _is_allocation_failure(exc: BaseException) -> bool:
    # onnxruntime reports a refused allocation as its generic Fail/RuntimeException whose text
    # is the only sign (BFCArena "Failed to allocate memory", std::bad_alloc); numpy as MemoryError
    text = str(exc)
    return isinstance(exc, MemoryError) or "Failed to allocate memory" in text or "bad_alloc" in text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwnas_agent.worker")
    parser.add_argument("mode", choices=["measure", "inspect"])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--memory-limit-bytes", type=int, default=None)
    parser.add_argument("--power-source", default=None)
    parser.add_argument("--data-files", default="[]")
    parser.add_argument("--cache-dir", default=None)
    return parser


def main(argv: Any = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.parent_pid is not None:
        # dies with the agent: at once on Linux, and on EOF of the agent's pipe anywhere
        lifeline.die_with_parent(args.parent_pid, signal.SIGKILL)
        lifeline.on_stdin_eof(lambda: os._exit(71))
    job_dir = args.paths[0] if args.mode == "measure" else None
    try:
        if args.memory_limit_bytes:
            limit_memory(args.memory_limit_bytes)
        try:
            if args.mode == "measure" and len(args.paths) == 2:
                with open(os.path.join(args.paths[0], "request.json")) as handle:
                    request = MeasureRequest.from_dict(json.load(handle))
                source = None
                if args.power_source:
                    spec = json.loads(args.power_source)
                    source = PowerSourceConfig(spec["kind"], spec.get("options", {}))
                check_stored_model(args.paths[1], json.loads(args.data_files))
                result = measure_file(args.paths[1], request, source, args.cache_dir)
                write_json_atomic(os.path.join(args.paths[0], "result.json"), result)
                return 0
            if args.mode == "inspect" and len(args.paths) == 1:
                from hwnas_agent.runtimes import onnxruntime as ort_runtime

                check_stored_model(args.paths[0], json.loads(args.data_files))
                print(json.dumps(ort_runtime.inspect(args.paths[0])))
                return 0
        except Exception as exc:
            if args.memory_limit_bytes and _is_allocation_failure(exc):
                raise MemoryLimitExceeded(
                    "the model needs more memory than the worker's limit of %.0f MB "
                    "(worker_memory_mb in the agent configuration: the memory all the agent's "
                    "workers share, one at a time): %s"
                    % (args.memory_limit_bytes / 1048576.0, runtime_message(str(exc))))
            raise
        print(json.dumps({"error": {"type": "usage", "message": "usage: worker measure JOB_DIR "
                                    "MODEL | worker inspect MODEL"}}))
        return 2
    except Exception as exc:  # reported to the agent, which keeps serving
        traceback.print_exc()  # the whole text, for the device's log only
        payload = {"error": wire_error(exc)}
        if job_dir is not None:
            write_json_atomic(os.path.join(job_dir, "error.json"), payload)
        print(json.dumps(payload))
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
