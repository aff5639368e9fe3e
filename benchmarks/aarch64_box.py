"""The aarch64 board in a box (hwnas.testing.aarch64): offline agent install into it, its
facts, and small models measured there (emulated) beside the same models on this machine.

    .venv/bin/python benchmarks/aarch64_box.py     (as root; scripts/setup.sh's packages)

Debian bookworm arm64 under qemu-user through binfmt_misc, reached by the tests' sshd with
ChrootDirectory, with no package index (every session's pip index is a closed port). Figures:
the root's build (cached: zero when found), the first `hwnas agent install` with a cold wheel
cache (platform probe and `pip download` of the aarch64 cp311 wheels on this machine, SFTP,
venv and pip --no-index under emulation, start), a re-install with nothing changed, bytes
shipped, the wheel cache's size, the agent's facts, and `hwnas profile` of two small models
in the box and on this machine's x86-64 agent with the same settings. The box's figures are
qemu's speed: never a Raspberry Pi's latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402

from hwnas.config import load_device_profile  # noqa: E402
from hwnas.disk import cache_folder  # noqa: E402
from hwnas.remote.check import calibration_model, precision_probe_model  # noqa: E402
from hwnas.remote.install import RemoteAgent  # noqa: E402
from hwnas.testing import aarch64  # noqa: E402
from hwnas.testing.sshd import free_port, keygen  # noqa: E402

HWNAS = str(Path(sys.executable).parent / "hwnas")
# the same methodology on both sides (one thread, as the box's profile)
MEASUREMENT = ("{warmup_iterations: 10, warmup_seconds: 0.2, min_iterations: 50, "
               "min_seconds: 1.0, rounds: 3}")
LOCAL = """\
name: x86-local
connection: {kind: local}
runtime: {execution_providers: [CPUExecutionProvider], intra_op_threads: 1}
precisions: [fp32, int8]
budgets: {model_size_mb: 1.0}
measurement: %s
""" % MEASUREMENT


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_install(profile: Path, cache: Path) -> dict:
    """One `hwnas agent install` through the library (for the shipped bytes), with the
    moment each phase's log line came."""
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    remote = RemoteAgent(load_device_profile(profile))
    try:
        remote.install(cache, lambda line: lines.append((time.perf_counter() - started, line)))
    finally:
        remote.close()
    total = time.perf_counter() - started

    def at(text: str) -> float | None:
        return next((t for t, line in lines if text in line), None)

    return {"seconds": round(total, 1), "shipped_files": len(remote.shipped.files),
            "shipped_bytes": remote.shipped.bytes, "shipped": list(remote.shipped.files),
            "planned_at_s": at("installing hwnas-agent") or at("already installed"),
            "shipped_at_s": at(": shipped "), "log": [f"{t:7.1f} s  {line}" for t, line in lines]}


def profile_models(models: list[Path], device: Path) -> list[dict]:
    done = subprocess.run([HWNAS, "profile", *map(str, models), "--device", str(device),
                           "--json"], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"hwnas profile on {device} failed: {done.stderr[-2000:]}")
    rows = []
    for row in json.loads(done.stdout):
        measured, runtime = row["measurement"], row["measurement"]["runtime"]
        rows.append({"model": row["model"], "size_mb": row["artifact"]["size_bytes"] / 1e6,
                     "p50_ms": measured["latency_ms"]["p50"], "p90_ms": measured["latency_ms"]["p90"],
                     "cv": measured["latency_ms"]["cv"], "iterations": measured["iterations"],
                     "emulated": runtime.get("emulated"), "emulation": runtime.get("emulation"),
                     "onnxruntime": runtime.get("version"),
                     "session_load_seconds": measured.get("session_load_seconds")})
    return rows


def main() -> int:
    why = aarch64.enable_binfmt()
    if why:
        print(f"aarch64 box: {why}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    root = aarch64.cached_root(cache_folder())
    root_seconds = time.perf_counter() - started
    info = aarch64.root_info(root)
    figures: dict = {"root": {**info, "found_or_built_seconds": round(root_seconds, 1),
                              "path": str(root)}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = [precision_probe_model_file(folder / "probe_cnn.onnx"),
                  calibration_model(folder / "matmul256.onnx")]
        cold_cache = folder / "cold-cache"  # the wheels are downloaded in the first install
        started = time.perf_counter()
        with aarch64.AArch64Box(root, folder / "box", keygen(folder / "id_ed25519")) as box:
            figures["box_start_seconds"] = round(time.perf_counter() - started, 1)
            profile = box.profile("pi5-box", agent_port=free_port(), measurement=MEASUREMENT)
            first = timed_install(profile, cold_cache)
            again = timed_install(profile, cold_cache)
            wheels = cold_cache / "device-wheels"
            figures["install"] = {
                "first": first, "reinstall": again,
                "wheel_cache_bytes": folder_bytes(wheels),
                "wheel_cache": sorted(p.name for p in wheels.rglob("*.whl")),
                "device_folder_bytes": folder_bytes(box.path("/root/.local/share/hwnas-agent")),
            }
            remote = RemoteAgent(load_device_profile(profile))
            try:
                figures["facts"] = remote.client().facts()
            finally:
                remote.close()
            started = time.perf_counter()
            check = subprocess.run([HWNAS, "devices", "check", str(profile), "--json"],
                                   capture_output=True, text=True, timeout=1800)
            figures["devices_check"] = {"seconds": round(time.perf_counter() - started, 1),
                                        "result": json.loads(check.stdout)[0]
                                        if check.returncode == 0 else check.stderr[-2000:]}
            box_rows = profile_models(models, profile)
        local = folder / "x86-local.yaml"
        local.write_text(LOCAL)
        x86_rows = profile_models(models, local)
    figures["measurement"] = MEASUREMENT
    figures["models"] = [{"box": b, "x86": x, "box_over_x86_p50": round(b["p50_ms"] / x["p50_ms"], 1)}
                         for b, x in zip(box_rows, x86_rows)]

    install = figures["install"]
    print(f"root: Debian {info['suite']} {info['arch']} {info['variant']}, "
          f"{info['root_bytes'] / 1e6:.0f} MB, built in {info['build_seconds']} s "
          f"(this run: {root_seconds:.1f} s); box started in {figures['box_start_seconds']} s")
    print(table(["install", "seconds", "files shipped", "MB shipped"],
                [[name, str(install[name]["seconds"]), str(install[name]["shipped_files"]),
                  f"{install[name]['shipped_bytes'] / 1e6:.1f}"] for name in ("first", "reinstall")]))
    print(f"wheel cache {install['wheel_cache_bytes'] / 1e6:.1f} MB: {', '.join(install['wheel_cache'])}")
    print("first install, as logged:\n  " + "\n  ".join(install["first"]["log"]))
    facts = figures["facts"]
    print(f"facts: {facts['machine']}, Python {facts['python']}, {facts['cpu_model']} "
          f"x{facts['cpu_count']}, onnxruntime {facts['runtimes']['onnxruntime']['version']}; "
          f"emulation: {(facts.get('emulation') or {}).get('reason')}")
    print(f"devices check: {figures['devices_check']['seconds']} s")
    print(table(["model", "MB", "box p50 ms (EMULATED)", "x86 p50 ms", "box/x86"],
                [[m["box"]["model"], f"{m['box']['size_mb']:.3f}", f"{m['box']['p50_ms']:.4f}",
                  f"{m['x86']['p50_ms']:.4f}", f"x{m['box_over_x86_p50']}"]
                 for m in figures["models"]]))
    save("aarch64_box", figures)
    return 0


def precision_probe_model_file(path: Path) -> Path:
    import onnx

    onnx.save(precision_probe_model(), str(path))
    return path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
