"""Precisions side by side: latency on this CPU and output fidelity against fp32, then which
precisions compile whole for Qualcomm's HTP (onnxruntime-qnn's x86 simulator) and how close
the simulated HTP's outputs stay to fp32.

    .venv/bin/python benchmarks/precision.py [--cpu-size 224] [--htp-size 64]

ResNet-18 and MobileNetV2 from torchvision, random weights (seed 0, nothing downloaded), every
layer at one precision. Inputs and calibration images are random normal samples (no image
data set is on this machine); the BatchNorm statistics are set from 64 such samples, as
training would set them (freshly initialised, MobileNetV2's outputs are ~1e-9, below what
float16 or an 8-bit output can hold). OutputFidelity figures say how far a precision moves the
outputs of these networks, not an accuracy. CPU latency: the real agent (`device_profiles/local.yaml`),
every artifact measured in turn, the round-robin repeated, medians of the rounds' p50/p90.
HTP: the local agent with `device_profiles/local-qnn-htp.yaml` says which nodes the HTP takes;
the simulator's time per inference is printed for scale only: it is not an NPU latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = ["resnet18", "mobilenet_v2"]
CPU_PRECISIONS = ["fp32", "fp16", "int8", "a16w8"]
HTP_PRECISIONS = ["fp32", "fp16", "int8", "a16w8", "int8_weight_only"]
ROUNDS = 3


def settle_batchnorm(model, size: int) -> None:
    """Running statistics from random inputs (cumulative average), then evaluation mode."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, size, size, generator=generator))
    model.eval()


def build(name: str, size: int, precision: str, folder: Path, calibration: np.ndarray):
    import torch
    import torchvision

    from hwnas.export.onnx import build_onnx, plan_units, precision_units
    from hwnas.records import Artifact

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000)
    settle_batchnorm(model, size)
    units = precision_units(model, {}, "layer")
    started = time.perf_counter()
    exported = build_onnx(model, (3, size, size), dict.fromkeys(plan_units(units), precision),
                          units, calibration, folder / f"{name}-{size}-{precision}.onnx")
    seconds = time.perf_counter() - started
    return Artifact.from_file(exported.path, {}, 0), exported, seconds


def cpu_part(size: int, folder: Path) -> list[dict]:
    from hwnas.config import load_device_profile
    from hwnas.evaluate import DeviceSession, compare_outputs, run_batches, _cpu_session
    from hwnas.remote.device import open_device

    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((32, 3, size, size)).astype(np.float32)
    held_out = rng.standard_normal((64, 3, size, size)).astype(np.float32)
    profile = load_device_profile(REPO / "device_profiles" / "local.yaml")
    rows, artifacts = [], []
    for name in MODELS:
        reference = None
        for precision in CPU_PRECISIONS:
            artifact, _, seconds = build(name, size, precision, folder, calibration)
            outputs = DeviceSession(artifact.path, profile).outputs(held_out)
            if precision == "fp32":
                reference = run_batches(_cpu_session(artifact.path), held_out, 16)
            fidelity = compare_outputs(reference, outputs)
            rows.append({"model": name, "precision": precision, "size_mb": artifact.size_mb,
                         "build_s": seconds, "cosine_mean": fidelity.cosine_mean,
                         "cosine_min": fidelity.cosine_min, "top1_agreement": fidelity.top1_agreement,
                         "p50_ms": [], "p90_ms": []})
            artifacts.append(artifact)
    with open_device(profile) as client:
        for artifact in artifacts:
            client.ensure_model(artifact)
        for _ in range(ROUNDS):  # side by side: each artifact once per round, in turn
            for row, artifact in zip(rows, artifacts):
                measured = client.measure(profile.measure_request(artifact.sha256))
                row["p50_ms"].append(measured.latency_ms_p50)
                row["p90_ms"].append(measured.latency_ms_p90)
    for row in rows:
        row["rounds_p50_ms"], row["rounds_p90_ms"] = row.pop("p50_ms"), row.pop("p90_ms")
        row["p50_ms"] = statistics.median(row["rounds_p50_ms"])
        row["p90_ms"] = statistics.median(row["rounds_p90_ms"])
    for name in MODELS:
        base = next(r for r in rows if r["model"] == name and r["precision"] == "fp32")
        for row in rows:
            if row["model"] == name:
                row["speedup_vs_fp32"] = base["p50_ms"] / row["p50_ms"]
    return rows


def htp_part(size: int, folder: Path) -> list[dict]:
    from hwnas.config import load_device_profile
    from hwnas.errors import MeasurementError
    from hwnas.evaluate import DeviceSession, _cpu_session, compare_outputs, run_batches
    from hwnas.remote.device import open_device
    from hwnas.remote.screen import screen_compatibility

    rng = np.random.default_rng(2)
    calibration = rng.standard_normal((32, 3, size, size)).astype(np.float32)
    held_out = rng.standard_normal((8, 3, size, size)).astype(np.float32)
    profile = load_device_profile(REPO / "device_profiles" / "local-qnn-htp.yaml")
    rows = []
    with open_device(profile) as client:
        for name in MODELS:
            reference = None
            for precision in HTP_PRECISIONS:
                artifact, exported, _ = build(name, size, precision, folder, calibration)
                if precision == "fp32":
                    reference = run_batches(_cpu_session(artifact.path), held_out, 8)
                plan = {u: precision for u in {u for _, u in exported.node_units if u}}
                started = time.perf_counter()
                try:
                    screen = screen_compatibility(client, profile, artifact, exported, plan)
                except MeasurementError as exc:
                    rows.append({"model": name, "precision": precision, "compiles_whole": False,
                                 "refused_nodes": None, "first_refusal": f"screening failed: {exc}"})
                    continue
                screen_seconds = time.perf_counter() - started
                row = {"model": name, "precision": precision, "compiles_whole": screen.compatible,
                       "refused_nodes": screen.refused_total, "screen_s": screen_seconds,
                       "first_refusal": None if screen.compatible else screen.reason(limit=1),
                       # the same bytes on onnxruntime's CPU provider, for comparison
                       "cpu_cosine_mean": compare_outputs(reference, run_batches(
                           _cpu_session(artifact.path), held_out, 8)).cosine_mean}
                if screen.compatible:
                    session = DeviceSession(artifact.path, profile, batch=len(held_out))
                    started = time.perf_counter()
                    outputs = session.outputs(held_out)
                    row["simulator_s_per_sample"] = (time.perf_counter() - started) / len(held_out)
                    fidelity = compare_outputs(reference, outputs, session.runtime, session.emulated)
                    row.update(cosine_mean=fidelity.cosine_mean, cosine_min=fidelity.cosine_min,
                               top1_agreement=fidelity.top1_agreement, runtime=fidelity.runtime)
                rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-size", type=int, default=224)
    parser.add_argument("--htp-size", type=int, default=64)
    parser.add_argument("--skip-htp", action="store_true")
    parser.add_argument("--htp-only", action="store_true",
                        help="keep the CPU half of results/precision.json, redo the HTP half")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hwnas-precision-") as work:
        if args.htp_only:
            import json

            from _common import RESULTS

            kept = json.loads((RESULTS / "precision.json").read_text())
            cpu, args.cpu_size = kept["cpu"], kept["cpu_input"][1]
        else:
            cpu = cpu_part(args.cpu_size, Path(work))
        print(f"\nCPU (local agent, 1 thread), input 3x{args.cpu_size}x{args.cpu_size}, batch 1")
        print(table(["model", "precision", "p50 ms", "p90 ms", "vs fp32", "MB", "cosine",
                     "min cos", "top-1 agree"],
                    [[r["model"], r["precision"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['speedup_vs_fp32']:.2f}x", f"{r['size_mb']:.1f}", f"{r['cosine_mean']:.5f}",
                      f"{r['cosine_min']:.4f}", f"{r['top1_agreement']:.0%}"] for r in cpu]))
        payload = {"cpu_input": [3, args.cpu_size, args.cpu_size],
                   "htp_input": [3, args.htp_size, args.htp_size], "rounds": ROUNDS, "cpu": cpu,
                   "htp": []}
        save("precision", payload)  # the CPU half is kept even if the simulator half fails
        htp = [] if args.skip_htp else htp_part(args.htp_size, Path(work))
        if htp:
            print(f"\nQNN HTP (onnxruntime-qnn simulator on x86), input 3x{args.htp_size}x{args.htp_size}")
            print(table(["model", "precision", "compiles whole", "cosine", "CPU cosine", "top-1 agree",
                         "sim s/sample", "first refusal"],
                        [[r["model"], r["precision"], "yes" if r["compiles_whole"] else
                          f"no ({r['refused_nodes']} nodes)", f"{r.get('cosine_mean', float('nan')):.5f}",
                          f"{r.get('cpu_cosine_mean', float('nan')):.5f}",
                          f"{r.get('top1_agreement', float('nan')):.0%}",
                          f"{r.get('simulator_s_per_sample', float('nan')):.2f}",
                          (r["first_refusal"] or "")[:90]] for r in htp]))
        save("precision", dict(payload, htp=htp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
