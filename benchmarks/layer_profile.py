"""Where the time goes in ResNet-18 and MobileNetV2 on this machine's CPU, fp32 and int8:
the top units (modules) and their share of the per-node time (issue 24's figure).

    .venv/bin/python benchmarks/layer_profile.py [--top 5] [--device device_profiles/local.yaml]
        [--save-as layer_profile]

The models are torchvision's with their default (random) initialisation: no weights are
downloaded, and time per module does not depend on the values. Each is exported to ONNX
(1x3x224x224), then `hwnas profile --layers` does the rest: the int8 variant (Q/DQ, per
channel, calibrated on random inputs), one measurement of each with a layer profile (median
per node over the profile's layer_profile_runs, after the timed runs), nodes mapped to the
model's modules. Shares are of the summed node time of profiled runs; the table below each
gives the profiler's own overhead. Timings are of this shared 2-core x86 VM, not of any edge
device; shares are steadier than times under load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import save, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ("resnet18", "mobilenet_v2")


def export(name: str, folder: Path) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local.yaml")
    parser.add_argument("--save-as", default="layer_profile")
    args = parser.parse_args()

    from hwnas.config import load_device_profile
    from hwnas.layers import layers_table
    from hwnas.profile import profile_models

    profile = load_device_profile(args.device)
    rows, found = [], []
    with tempfile.TemporaryDirectory() as scratch:
        paths = [export(name, Path(scratch)) for name in MODELS]
        result = profile_models(paths, profile, ["int8"], (), None, 32, layers=True)
    for row in result.rows:
        layers = row.measurement.layers or {}
        top = row.units[:args.top]
        found.append({"model": row.model, "precision": row.precision,
                      "latency_ms_p50": row.measurement.latency_ms_p50,
                      "profiled_run_ms_p50": layers.get("profiled_run_ms_p50"),
                      "profiler_overhead": layers.get("profiler_overhead"),
                      "profiled_runs": layers.get("runs"),
                      "top_units": [u.to_dict() for u in top],
                      "top_share": sum(u.share for u in top),
                      "units": len(row.units)})
        rows += [[row.model, row.precision, u.unit, f"{u.median_us:.0f}", f"{u.share:.1%}",
                  ",".join(u.op_types)] for u in top]
    print(table(["model", "precision", "unit", "median us", "share", "ops"], rows))
    print()
    print(layers_table([(f"{r.model} {r.precision}", r.measurement.layers, r.units)
                        for r in result.rows], args.top))
    save(args.save_as, {"command": " ".join(["benchmarks/layer_profile.py", *sys.argv[1:]]),
                        "device_profile": str(Path(args.device).resolve().relative_to(REPO)),
                        "models": "torchvision resnet18, mobilenet_v2 (random init), 1x3x224x224",
                        "rows": found})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
