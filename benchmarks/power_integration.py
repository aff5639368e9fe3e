"""Is the agent's energy figure right? Integration vs the sensor's counter, and energy per
inference of three model sizes on one sensor.

    .venv/bin/python benchmarks/power_integration.py

(a) Trapezoid vs counter vs truth. This VM has no power sensor, so a writer thread plays
    one: it keeps a sysfs tree in the kernel's layouts up to date every 2 ms with a power
    that follows a known profile (base + 0.7 Hz sine + 3.3 Hz square bursts), whose integral
    is known exactly: RAPL (energy_uj, wrapping at a small max_energy_range_uj so that the
    wrap is crossed in every window; the agent derives watts from counter deltas) and hwmon
    (power1_input instantaneous µW beside energy1_input µJ). The agent's own readers and
    sampler read it at 5, 20 and 100 Hz; both integrals are compared with the truth over the
    same window. This checks the arithmetic (window edges, wrap, trapezoid, counter), not a
    sensor. A real RAPL/hwmon energy counter, where this runs with one, is measured too.
(b) Energy per inference of three convnets of different sizes on one sensor: the cpu_meter
    model (scripts/cpu_meter.py, a linear model of CPU busy fraction, not a sensor) through
    the real agent, pinned to one CPU that the meter watches. It must grow with the model.
"""

from __future__ import annotations

import bisect
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, save, table  # noqa: E402

from hwnas_agent.power import SensorUnavailable, open_source  # noqa: E402
from hwnas_agent.power.sampler import PowerSampler, counter, trapezoid  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WINDOW_S = 3.0
REPEATS = 3
RATES_HZ = (5, 20, 100)
RAPL_MAX_RANGE_UJ = 10_000_000  # 10 J: a wrap about every second at ~10 W


class KnownPower:
    """P(t) = base + A sin(2π f1 t) + B [frac(f2 t) < duty], and its exact integral."""

    base, sine_w, sine_hz, burst_w, burst_hz, duty = 8.0, 2.0, 0.7, 5.0, 3.3, 0.3

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def watts(self, now: float) -> float:
        t = now - self.origin
        burst = self.burst_w if (t * self.burst_hz) % 1.0 < self.duty else 0.0
        return self.base + self.sine_w * math.sin(2 * math.pi * self.sine_hz * t) + burst

    def joules(self, now: float) -> float:
        t = now - self.origin
        omega = 2 * math.pi * self.sine_hz
        cycles, phase = divmod(t * self.burst_hz, 1.0)
        bursts = (cycles * self.duty + min(phase, self.duty)) / self.burst_hz
        return self.base * t + self.sine_w * (1 - math.cos(omega * t)) / omega + self.burst_w * bursts


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FixtureWriter(threading.Thread):
    """Keeps RAPL and hwmon files of a fixture tree at the profile's values every 2 ms."""

    def __init__(self, root: Path, profile: KnownPower) -> None:
        super().__init__(daemon=True)
        self.profile, self.stop_event = profile, threading.Event()
        rapl = root / "class/powercap/intel-rapl:0"
        hwmon = root / "class/hwmon/hwmon0"
        for folder in (rapl, hwmon):
            folder.mkdir(parents=True)
        (rapl / "name").write_text("package-0\n")
        (rapl / "max_energy_range_uj").write_text("%d\n" % RAPL_MAX_RANGE_UJ)
        (hwmon / "name").write_text("fixture_meter\n")
        self.files = {"rapl": rapl / "energy_uj", "power": hwmon / "power1_input",
                      "energy": hwmon / "energy1_input"}
        self.log_times: list[float] = []  # when each value was written, and its joules
        self.log_joules: list[float] = []
        self.tick()

    def written_joules(self, at: float) -> float:
        """The energy the files held at ``at``: the last write before it."""
        return self.log_joules[bisect.bisect_right(self.log_times, at) - 1]

    def tick(self) -> None:
        now = time.monotonic()
        joules = self.profile.joules(now)
        write_atomic(self.files["rapl"], "%d\n" % (round(joules * 1e6) % RAPL_MAX_RANGE_UJ))
        write_atomic(self.files["power"], "%d\n" % round(self.profile.watts(now) * 1e6))
        write_atomic(self.files["energy"], "%d\n" % round(joules * 1e6))
        self.log_times.append(time.monotonic())  # visible from here on
        self.log_joules.append(joules)

    def run(self) -> None:
        while not self.stop_event.wait(0.002):
            self.tick()


def error_pct(value: float, truth: float) -> float:
    return 100.0 * (value - truth) / truth


def integration_vs_truth() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="power-fixture-") as folder:
        profile = KnownPower()
        writer = FixtureWriter(Path(folder), profile)
        writer.start()
        try:
            for layout in ("rapl", "hwmon"):
                for rate in RATES_HZ:
                    for repeat in range(REPEATS):
                        source = open_source(layout, {"sysfs_root": folder})
                        sampler = PowerSampler(source, rate_hz=rate).start()
                        time.sleep(WINDOW_S)
                        window = sampler.stop()
                        by_counter, by_trapezoid = counter(window.samples), trapezoid(window.samples)
                        assert by_counter and by_trapezoid and not window.errors, window.errors
                        truth_counter = profile.joules(by_counter[2]) - profile.joules(by_counter[1])
                        # the same, as the files held it: without the writer's own lag
                        written = (writer.written_joules(by_counter[2])
                                   - writer.written_joules(by_counter[1]))
                        truth_trapezoid = (profile.joules(by_trapezoid[2])
                                           - profile.joules(by_trapezoid[1]))
                        rows.append({
                            "layout": layout, "rate_hz": rate, "repeat": repeat,
                            "samples": len(window.samples), "truth_j": truth_counter,
                            "counter_j": by_counter[0],
                            "counter_error_pct": error_pct(by_counter[0], truth_counter),
                            "counter_vs_written_pct": error_pct(by_counter[0], written),
                            "trapezoid_j": by_trapezoid[0],
                            "trapezoid_error_pct": error_pct(by_trapezoid[0], truth_trapezoid),
                            "wraps": int(profile.joules(by_counter[2]) * 1e6 // RAPL_MAX_RANGE_UJ
                                         - profile.joules(by_counter[1]) * 1e6 // RAPL_MAX_RANGE_UJ),
                        })
        finally:
            writer.stop_event.set()
            writer.join()
    return rows


def real_counters() -> list[dict]:
    """This machine's own RAPL / hwmon energy counters, if it has any (under a CPU load)."""
    found = []
    for kind in ("rapl", "hwmon"):
        try:
            source = open_source(kind, {})
        except SensorUnavailable as exc:
            found.append({"kind": kind, "available": False, "reason": str(exc)})
            continue
        if not source.has_energy_counter:
            found.append({"kind": kind, "available": False, "reason": "no energy counter"})
            source.close()
            continue
        sampler = PowerSampler(source, rate_hz=20).start()
        deadline = time.monotonic() + WINDOW_S
        while time.monotonic() < deadline:  # a load, so that the figure is not idle noise
            sum(math.sqrt(i) for i in range(10000))
        window = sampler.stop()
        source.close()
        by_counter, by_trapezoid = counter(window.samples), trapezoid(window.samples)
        found.append({"kind": kind, "available": True, "figure": source.figure,
                      "counter_j": by_counter[0] if by_counter else None,
                      "trapezoid_j": by_trapezoid[0] if by_trapezoid else None,
                      "errors": window.errors})
    return found


def make_models(folder: Path) -> dict[str, Path]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    paths = {}
    for name, width, depth in (("small", 8, 1), ("medium", 32, 2), ("large", 96, 3)):
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
        paths[name] = folder / f"{name}.onnx"
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(paths[name]),
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return paths


def energy_per_inference_by_size() -> list[dict]:
    from hwnas_agent.protocol import MeasureRequest

    from hwnas.records import Artifact
    from hwnas.remote.local import LocalAgentProcess

    cpu = max(os.sched_getaffinity(0))
    meter = [sys.executable, str(REPO / "scripts" / "cpu_meter.py"), "--idle-w", "4",
             "--busy-w", "15", "--interval", "0.1", "--cpus", str(cpu)]
    options = {"command": meter, "rate_hz": 10, "scope": "model",
               "covers": "linear model of CPU %d busy fraction (scripts/cpu_meter.py), not a sensor"
               % cpu}
    rows = []
    with tempfile.TemporaryDirectory(prefix="power-models-") as folder:
        paths = make_models(Path(folder))
        # the meter is the agent's configuration; requests name it
        process = LocalAgentProcess(Path(folder) / "state", power_sources={
            "cpu-meter": {"kind": "command", "options": options}})
        process.start()
        client = process.client("cpu-meter")
        try:
            artifacts = {name: Artifact.from_file(path, {}, 0) for name, path in paths.items()}
            for artifact in artifacts.values():
                client.ensure_model(artifact)
            for repeat in range(REPEATS):  # models alternate so that drift hits them alike
                for name, artifact in artifacts.items():
                    request = MeasureRequest(
                        model_sha256=artifact.sha256, warmup_seconds=0.5, min_seconds=3.0,
                        min_iterations=50, rounds=3, cpu_affinity=[cpu], power_source="cpu-meter",
                        power_min_samples=20, idle_seconds=2.0)
                    report = client.measure(request).agent_report
                    power = report["power"]
                    rows.append({"model": name, "repeat": repeat, "bytes": artifact.size_bytes,
                                 "latency_ms_p50": report["latency_ms"]["p50"],
                                 "mean_w": power["mean_w"], "idle_w": power["idle_w"],
                                 "samples": power["samples"], "scope": power["scope"],
                                 "method": power["method"],
                                 "energy_mj_per_inference": power["energy_mj_per_inference"],
                                 "energy_mj_per_inference_above_idle":
                                     power["energy_mj_per_inference_above_idle"]})
        finally:
            process.stop()
    return rows


def main() -> int:
    rows = integration_vs_truth()
    summary = []
    for layout in ("rapl", "hwmon"):
        for rate in RATES_HZ:
            group = [r for r in rows if r["layout"] == layout and r["rate_hz"] == rate]
            summary.append({
                "layout": layout, "rate_hz": rate, "samples": median([r["samples"] for r in group]),
                "counter_abs_error_pct": median([abs(r["counter_error_pct"]) for r in group]),
                "counter_vs_written_abs_pct": median([abs(r["counter_vs_written_pct"]) for r in group]),
                "trapezoid_abs_error_pct": median([abs(r["trapezoid_error_pct"]) for r in group]),
                "trapezoid_max_abs_error_pct": max(abs(r["trapezoid_error_pct"]) for r in group),
                "wraps_per_window": median([r["wraps"] for r in group])})
    print("(a) energy over a %.0f s window vs the known truth (median of %d windows)\n"
          % (WINDOW_S, REPEATS))
    print(table(["layout", "rate Hz", "samples", "counter |err| %", "counter vs files |err| %",
                 "trapezoid |err| %", "trapezoid max |err| %", "RAPL wraps"],
                [[s["layout"], s["rate_hz"], "%.0f" % s["samples"], "%.3f" % s["counter_abs_error_pct"],
                  "%.3f" % s["counter_vs_written_abs_pct"],
                  "%.3f" % s["trapezoid_abs_error_pct"], "%.3f" % s["trapezoid_max_abs_error_pct"],
                  "%.0f" % s["wraps_per_window"] if s["layout"] == "rapl" else "-"]
                 for s in summary]))
    real = real_counters()
    for found in real:
        print("real %s counter: %s" % (found["kind"], found if found["available"] else
                                       "none here (%s)" % found["reason"]))

    by_size = energy_per_inference_by_size()
    sizes = []
    for name in ("small", "medium", "large"):
        group = [r for r in by_size if r["model"] == name]
        sizes.append({"model": name, "bytes": group[0]["bytes"],
                      "latency_ms_p50": median([r["latency_ms_p50"] for r in group]),
                      "mean_w": median([r["mean_w"] for r in group]),
                      "idle_w": median([r["idle_w"] for r in group]),
                      "samples": median([r["samples"] for r in group]),
                      "energy_mj_per_inference": median([r["energy_mj_per_inference"] for r in group]),
                      "energy_mj_per_inference_above_idle":
                          median([r["energy_mj_per_inference_above_idle"] for r in group]),
                      "energy_spread_pct": 100.0 * (max(r["energy_mj_per_inference"] for r in group)
                                                    - min(r["energy_mj_per_inference"] for r in group))
                      / statistics.median([r["energy_mj_per_inference"] for r in group])})
    grows = all(a["energy_mj_per_inference"] < b["energy_mj_per_inference"]
                for a, b in zip(sizes, sizes[1:]))
    print("\n(b) energy per inference on the cpu_meter MODEL (not a sensor), real agent, "
          "median of %d jobs each\n" % REPEATS)
    print(table(["model", "bytes", "p50 ms", "mean W", "idle W", "samples", "mJ/inference",
                 "mJ above idle", "spread %"],
                [[s["model"], s["bytes"], "%.4f" % s["latency_ms_p50"], "%.2f" % s["mean_w"],
                  "%.2f" % s["idle_w"], "%.0f" % s["samples"], "%.5f" % s["energy_mj_per_inference"],
                  "%.5f" % s["energy_mj_per_inference_above_idle"], "%.1f" % s["energy_spread_pct"]]
                 for s in sizes]))
    print("energy per inference grows with the model: %s" % grows)
    save("power_integration", {"window_s": WINDOW_S, "repeats": REPEATS,
                               "integration": {"summary": summary, "windows": rows,
                                               "real_counters": real},
                               "by_model_size": {"summary": sizes, "jobs": by_size,
                                                 "grows_with_model": grows}})
    return 0 if grows else 1


if __name__ == "__main__":
    raise SystemExit(main())
