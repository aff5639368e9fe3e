"""`hwnas devices check`: is each device usable, and what is it?"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.errors import HwnasError
from hwnas.records import Artifact
from hwnas.remote.device import open_device
from hwnas.remote.ssh import SSHSession, fingerprint

CALIBRATION_SECONDS = 0.5


def calibration_model(path: Path) -> Path:
    """A small dense model (256x256 MatMul, ReLU), the same bytes every time."""
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Relu", ["h"], ["out"])],
        "hwnas_calibration",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 256])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by older onnxruntime on devices
    onnx.save(model, str(path))
    return path


def check_device(profile: DeviceProfile) -> dict[str, Any]:
    result: dict[str, Any] = {"device": profile.name, "kind": profile.connection.kind, "ok": False}
    started = time.perf_counter()
    try:
        if isinstance(profile.connection, SSHConnection):
            session = SSHSession(profile.name, profile.connection)
            try:
                key = session.client().get_transport().get_remote_server_key()  # type: ignore[union-attr]
                result["host_key"] = f"{key.get_name()} {fingerprint(key)}"
                result["reachable"] = True
            finally:
                session.close()
        with open_device(profile) as client:
            hello = client.hello()
            result["agent_version"] = hello["agent_version"]
            result["python"] = hello["python"]
            facts = client.facts()
            result["cpu"] = f"{facts.get('cpu_model')} x{facts.get('cpu_count')}"
            result["memory_mb"] = facts.get("memory_total_mb")
            result["runtimes"] = {name: info.get("execution_providers", [])
                                  for name, info in (facts.get("runtimes") or {}).items()}
            result["power_sources"] = [s.get("kind") for s in facts.get("power_sources", [])]
            with tempfile.TemporaryDirectory() as folder:
                artifact = Artifact.from_file(calibration_model(Path(folder) / "cal.onnx"), {}, 0)
                client.ensure_model(artifact)
                request = profile.measure_request(artifact.sha256)
                request = type(request)(**{**request.to_dict(), "min_seconds": CALIBRATION_SECONDS,
                                           "min_iterations": 20, "warmup_seconds": 0.1,
                                           "power_source": "none"})
                measured = client.measure(request)
            result["calibration_p50_ms"] = measured.latency_ms_p50
            result["calibration_cv"] = measured.latency_cv
            result["ok"] = True
    except HwnasError as exc:
        result["error"] = str(exc)
    result["check_seconds"] = time.perf_counter() - started
    return result


def check_table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r['device']} ({r['kind']}): {'OK' if r['ok'] else 'FAILED'}")
        for key in ("host_key", "agent_version", "python", "cpu", "memory_mb", "runtimes",
                    "power_sources", "calibration_p50_ms", "calibration_cv", "error"):
            if key in r:
                value = r[key]
                if isinstance(value, float):
                    value = f"{value:.4f}" if key.startswith("calibration") else f"{value:.0f}"
                lines.append(f"  {key:<20} {value}")
    return "\n".join(lines)
