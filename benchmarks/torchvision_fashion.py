"""torchvision CNNs on Fashion-MNIST resized to 3x64x64: the base model against the best model
the search finds under a latency budget of half the base model's measured p90.

    .venv/bin/python benchmarks/torchvision_fashion.py [--models mobilenet_v2,resnet18]
        [--trials 10] [--no-precision] [--train-only] [--work DIR]

For each model: train the base model here (cached by content hash), measure its fp32 ONNX on
device_profiles/local.yaml, search with budget p90 <= 0.5 x that figure, then re-measure the
base model and the best feasible trial side by side in one agent session and evaluate both
exported ONNX files on the same test images. Kept feasible on 2 cores: a subset of the data
(train_limit, test_limit), a few epochs, short fine-tunes; the settings are in SPACE below
and in the saved JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from _common import save, table  # noqa: E402

from hwnas.evaluate import onnx_split_accuracy  # noqa: E402
from hwnas.records import Artifact  # noqa: E402
from hwnas.run import RunFolder, outcomes  # noqa: E402
from hwnas.pareto import best_feasible  # noqa: E402
from hwnas.search import open_pool, prepare, run_search, trial_context  # noqa: E402
from hwnas.search.candidates import CandidateBuilder, Timings  # noqa: E402
from hwnas.search.measuring import DeviceLease, TrialMeasurer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "device_profiles" / "local.yaml"
MODELS = {
    "mobilenet_v2": {"torchvision": "mobilenet_v2", "kwargs": {"width_mult": 0.5},
                     "train": {"epochs": 4, "batch_size": 64, "learning_rate": 0.003}},
    "resnet18": {"torchvision": "resnet18",
                 "train": {"epochs": 3, "batch_size": 64, "learning_rate": 0.002}},
}


def space(name: str, base: dict, budget_ms: float | None, trials: int, precision: bool) -> dict:
    return {
        "name": f"fashion64-{name}",
        "base_model": base,
        "dataset": {"builtin": "fashion-mnist", "preprocessing": {"resize": 64, "channels": 3},
                    "train_limit": 4000, "test_limit": 1000, "validation_fraction": 0.1,
                    "calibration_samples": 64},
        "knobs": {"width": {"keep_ratios": [0.25, 0.5, 0.75, 1.0]},
                  "pruning": {"criteria": ["l1"], "global_ratios": [0.0, 0.2]},
                  "precision": {"granularity": "stage"} if precision else None},
        # bounded by steps, so that every trial gets the same fine-tuning on a loaded machine
        "finetune": {"max_steps": 150, "max_seconds": 1800, "batch_size": 64,
                     "learning_rate": 0.002},
        # the latency budget alone (the device profile's default size budget lifted)
        "budgets": {"latency_p90_ms": round(budget_ms, 4), "model_size_mb": 1000.0}
        if budget_ms else {},
        "search": {"n_trials": trials, "sampler": "tpe", "seed": 0},
    }


def measure(builder: CandidateBuilder, pool, artifact: Artifact):
    lease = DeviceLease(pool)
    try:
        return TrialMeasurer(lease, Timings()).measure(artifact)
    finally:
        lease.release()


def one_model(name: str, work: Path, trials: int, precision: bool, train_only: bool) -> dict | None:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space(name, MODELS[name], None, trials, precision)))
    started = time.perf_counter()
    prepared = prepare(path, DEVICE, log=lambda line: print(f"  {line}", flush=True))
    print(f"{name}: base model test accuracy {prepared.base.test_accuracy:.4f} "
          f"(trained in {prepared.base.train_seconds:.0f} s, ready in "
          f"{time.perf_counter() - started:.0f} s)", flush=True)
    if train_only:
        return None
    run = RunFolder.locate(prepared.space, prepared.device, folder / "base-run")
    with open_pool(prepared.devices) as pool:
        builder = CandidateBuilder(trial_context(prepared, pool, run))
        base = builder.export(prepared.base.module, builder.base_candidate(), folder / "base.onnx")
        # measured once: a re-run continues the same study under the same budget
        noted = folder / "base_p90_ms.json"
        base_p90 = json.loads(noted.read_text()) if noted.exists() else \
            measure(builder, pool, base).latency_ms_p90
        noted.write_text(json.dumps(base_p90))
    budget = 0.5 * base_p90
    print(f"{name}: base p90 {base_p90:.3f} ms -> budget {budget:.3f} ms", flush=True)
    path.write_text(yaml.safe_dump(space(name, MODELS[name], budget, trials, precision)))
    searched = run_search(path, DEVICE, folder / "run", progress=False,
                          log=lambda line: print(f"  {line}", flush=True))
    found = outcomes(searched.study)
    best = best_feasible(found)
    rows = []
    with open_pool(prepared.devices) as pool:
        builder = CandidateBuilder(trial_context(prepared, pool, searched.run))
        entries = [("base (fp32, unpruned)", base, None)]
        if best is not None:
            entries.append((f"search trial {best.number}",
                            searched.run.kept_artifact(best, searched.study), best))
        for label, artifact, outcome in entries:
            measured = measure(builder, pool, artifact)
            rows.append({"model": name, "variant": label,
                         "candidate": outcome.summary() if outcome else "",
                         "accuracy_test": onnx_split_accuracy(artifact, prepared.task.test),
                         "latency_ms_p50": measured.latency_ms_p50,
                         "latency_ms_p90": measured.latency_ms_p90, "size_mb": artifact.size_mb})
    return {"model": name, "base_p90_at_budgeting_ms": base_p90, "budget_latency_p90_ms": budget,
            "trials": len(found), "feasible": sum(o.feasible for o in found),
            "failed": sum(o.failure is not None for o in found),
            "seconds": time.perf_counter() - started, "rows": rows,
            "space": space(name, MODELS[name], budget, trials, precision)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--no-precision", action="store_true",
                        help="search width and pruning only (no per-stage precision)")
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the bases")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-torchvision-fashion")
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        result = one_model(name, args.work, args.trials, not args.no_precision, args.train_only)
        if result is not None:
            results.append(result)
    if not results:
        return 0
    rows = [r for result in results for r in result["rows"]]
    print()
    print(table(["model", "variant", "test acc", "p50 ms", "p90 ms", "MB", "candidate"],
                [[r["model"], r["variant"], f"{r['accuracy_test']:.4f}",
                  f"{r['latency_ms_p50']:.3f}", f"{r['latency_ms_p90']:.3f}",
                  f"{r['size_mb']:.3f}", r["candidate"]] for r in rows]))
    for result in results:
        print(f"{result['model']}: budget p90 <= {result['budget_latency_p90_ms']:.3f} ms, "
              f"{result['feasible']} of {result['trials']} trials feasible, "
              f"{result['failed']} failed, {result['seconds'] / 60:.0f} min")
    save("torchvision_fashion", {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
