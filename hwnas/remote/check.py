"""`hwnas devices check`: is each device usable, and what is it?"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from hwnas_agent.protocol import NO_POWER
from onnx import TensorProto, helper, numpy_helper

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.errors import DeviceError, HwnasError
from hwnas.records import Artifact
from hwnas.remote.device import open_device
from hwnas.remote.runtime_needs import runtime_use
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


def precision_probe_model() -> onnx.ModelProto:
    """Two convolutions and a linear head: the ops every precision of a plan applies to."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((8, 3, 3, 3)), "b1": np.zeros(8),
               "w2": rng.standard_normal((8, 8, 3, 3)) * 0.3, "b2": np.zeros(8),
               "w3": rng.standard_normal((4, 8)) * 0.3, "b3": np.zeros(4)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "hwnas_precision_probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def emulated_what(measured: Any) -> str:
    """What was emulated: the whole machine (an agent under qemu-user) or an accelerator
    (Qualcomm's HTP simulated on x86)."""
    runtime = measured.agent_report.get("runtime") or {}
    return "emulated machine" if runtime.get("user_mode_emulation") else "simulated accelerator"


def precision_support(client: Any, profile: DeviceProfile, folder: Path) -> dict[str, str]:
    """Precision -> what the device's runtime made of a small model written in it, loaded
    with the profile's providers and fallback setting: 'ok', or its refusal."""
    from hwnas.export.precision import ExportStyle, realise_plan

    style = ExportStyle(profile.export.io_precision, profile.export.int8_activations)
    float_model = precision_probe_model()
    units = {node.name: "probe" for node in float_model.graph.node}
    calibration = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    found = {}
    for precision in profile.precisions:
        model = onnx.ModelProto()
        model.CopyFrom(float_model)
        if precision != "fp32" or style.io_precision != "fp32":
            model = realise_plan(model, units, {"probe": precision}, calibration, "minmax", style)
        path = folder / f"probe-{precision}.onnx"
        onnx.save(model, str(path))
        artifact = Artifact.from_file(path, {}, 0)
        try:
            client.ensure_model(artifact)
            request = dataclasses.replace(
                profile.measure_request(artifact.sha256), min_seconds=0.0, min_iterations=3,
                warmup_seconds=0.0, warmup_iterations=1, rounds=1, power_source=NO_POWER,
                cooldown_below_c=None)
            measured = client.measure(request)
            found[precision] = "ok" + (f" ({emulated_what(measured)})" if measured.emulated else "")
        except HwnasError as exc:
            found[precision] = f"refused: {exc}"
    return found


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
            result["runtimes"] = {  # every runtime that imports there, its version and EPs
                name: info.get("error") or " ".join(
                    [str(info.get("version"))] + info.get("execution_providers", []))
                for name, info in (facts.get("runtimes") or {}).items()}
            result["power_sources"] = [s.get("kind") for s in facts.get("power_sources", [])]
            if facts.get("emulation"):  # the agent runs under qemu-user: no figure is a latency
                result["emulated"] = facts["emulation"]["reason"]
            result["uses"], missing = runtime_use(profile, facts)
            if missing:
                raise DeviceError(missing)
            _check_power_source(profile, facts)
            with tempfile.TemporaryDirectory() as folder:
                artifact = Artifact.from_file(calibration_model(Path(folder) / "cal.onnx"), {}, 0)
                client.ensure_model(artifact)
                request = profile.measure_request(artifact.sha256)
                request = type(request)(**{**request.to_dict(), "min_seconds": CALIBRATION_SECONDS,
                                           "min_iterations": 20, "warmup_seconds": 0.1,
                                           "power_source": NO_POWER})
                measured = client.measure(request)
            result["calibration_p50_ms"] = measured.latency_ms_p50
            result["calibration_cv"] = measured.latency_cv
            # a simulator's timing spread says nothing of the device's (its latency is refused)
            result["warnings"] = _warnings(profile, facts,
                                           0.0 if measured.emulated else measured.latency_cv)
            if measured.emulated:
                result["emulated"] = measured.agent_report["runtime"].get("emulation")
            with tempfile.TemporaryDirectory() as folder:
                result["precisions"] = precision_support(client, profile, Path(folder))
            result["ok"] = True
    except HwnasError as exc:
        result["error"] = str(exc)
    result["check_seconds"] = time.perf_counter() - started
    return result


# a calibration CV above this: the device's timings vary more than budgets near a model's
# latency can be decided on
NOISY_CV = 0.2


def _warnings(profile: DeviceProfile, facts: dict[str, Any], cv: float) -> list[str]:
    """What passes the check but will cost the search: more threads than cores, a noisy
    device."""
    found = []
    cores, threads = facts.get("cpu_count"), profile.runtime.intra_op_threads
    if isinstance(cores, int) and threads and threads > cores:
        found.append(f"runtime.intra_op_threads {threads} is more than the device's {cores} "
                     f"cores: threads wait for each other and timings vary; use at most {cores}")
    if cv > NOISY_CV:
        found.append(f"calibration CV {cv:.2f}: the same model's latency varies by more than "
                     f"{NOISY_CV:.0%} (other load, frequency scaling or heat); candidates near a "
                     f"latency budget will be measured again and may still be misjudged: quiet "
                     f"the device, pin its clocks, or raise measurement.rounds")
    return found


def _check_power_source(profile: DeviceProfile, facts: dict[str, Any]) -> None:
    """The profile's power source among the sensors the agent finds there (a configured meter
    program is never detected): a measurement with it would fail at the first search trial."""
    wanted = profile.power.source
    if wanted in (NO_POWER, "command"):
        return
    found = {s.get("kind"): s for s in facts.get("power_sources", [])}
    if wanted in found and not found[wanted].get("error"):
        return
    why = f"it fails: {found[wanted]['error']}" if wanted in found else \
        f"the agent finds {', '.join(k for k in found if k) or 'no sensor'} there"
    raise DeviceError(f"{profile.name}: the profile's power.source {wanted} is not available on "
                      f"the device ({why}); fix the sensor (docs/targets/ says what each needs), "
                      f"name one the device has, or set power: {{source: none}} to measure "
                      f"without watts")


def check_table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r['device']} ({r['kind']}): {'OK' if r['ok'] else 'FAILED'}")
        for key in ("host_key", "agent_version", "python", "cpu", "memory_mb", "runtimes",
                    "uses", "power_sources", "calibration_p50_ms", "calibration_cv", "emulated", "error"):
            if key in r:
                value = r[key]
                if isinstance(value, float):
                    value = f"{value:.4f}" if key.startswith("calibration") else f"{value:.0f}"
                lines.append(f"  {key:<20} {value}")
        for precision, verdict in (r.get("precisions") or {}).items():
            lines.append(f"  {'precision ' + precision:<20} {verdict}")
        lines += [f"  {'warning':<20} {w}" for w in r.get("warnings") or ()]
    return "\n".join(lines)
