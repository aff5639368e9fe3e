"""The search's best feasible model against uniform pruning at about the same measured latency.

    .venv/bin/python benchmarks/uniform_baseline.py [RUN_DIR]

The baseline: the same keep ratio in every stage, L1 magnitude, no global pruning, every
stage int8 (the usual "prune uniformly, then quantize" recipe), fine-tuned with the same
distillation budget and evaluated the same way. Every model, the search's winner included,
is measured again in this one run by the same agent, so latencies are compared side by side.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402

from hwnas.compress.finetune import finetune  # noqa: E402
from hwnas.evaluate import onnx_accuracy  # noqa: E402
from hwnas.records import Artifact, Candidate  # noqa: E402
from hwnas.remote.device import open_device  # noqa: E402
from hwnas.report import best_feasible  # noqa: E402
from hwnas.search import RunInfo, prepare, trial_context  # noqa: E402
from hwnas.search.objective import CandidateBuilder, Timings  # noqa: E402

KEEP_RATIOS = [0.25, 0.375, 0.5, 0.625, 0.75, 1.0]


def main() -> int:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion-mnist-cnn--local")
    info = RunInfo.load(run_dir)
    study = info.open_study()
    best = best_feasible(study)
    if best is None:
        print("no feasible trial in this study yet")
        return 1
    prepared = prepare(run_dir / "search_space.yaml", run_dir / "device_profile.yaml")
    work = run_dir / "benchmark-uniform"
    rows = []
    with open_device(prepared.device) as client:
        builder = CandidateBuilder(trial_context(prepared, client, work))
        best_artifact = Artifact.from_file(run_dir / "artifacts" / f"{best.user_attrs['artifact']['sha256']}.onnx",
                                           best.user_attrs["artifact"]["channels"],
                                           best.user_attrs["artifact"]["parameters"])
        best_measured = builder.measure(best_artifact, Timings())
        search_row = {"model": f"search trial {best.number}",
                      "candidate": Candidate.from_dict(best.user_attrs["candidate"]).summary(),
                      "accuracy_val": best.user_attrs["accuracy_val"],
                      "accuracy_test": best.user_attrs["accuracy_test"],
                      "latency_ms_p50": best_measured.latency_ms_p50,
                      "latency_ms_p90": best_measured.latency_ms_p90,
                      "size_mb": best_artifact.size_mb}
        for keep in KEEP_RATIOS:
            stages = prepared.shape.stages
            candidate = Candidate.build({s: keep for s in stages}, "l1", 0.0,
                                        {u: "int8" for u in prepared.shape.precision_units})
            model = builder.prune(candidate)
            finetune(model, prepared.base.module, prepared.task, prepared.space.finetune, seed=0)
            artifact = builder.export(model, candidate, work / f"uniform-{keep}.onnx")
            measured = builder.measure(artifact, Timings())
            rows.append({"model": f"uniform keep {keep:g} int8", "candidate": candidate.summary(),
                         "accuracy_val": onnx_accuracy(artifact, prepared.task.val_x, prepared.task.val_y),
                         "accuracy_test": onnx_accuracy(artifact, prepared.task.test_x, prepared.task.test_y),
                         "latency_ms_p50": measured.latency_ms_p50,
                         "latency_ms_p90": measured.latency_ms_p90, "size_mb": artifact.size_mb})
            print(f"  {rows[-1]['model']}: test acc {rows[-1]['accuracy_test']:.4f}, "
                  f"p90 {measured.latency_ms_p90:.4f} ms", flush=True)
    matched = min(rows, key=lambda r: abs(r["latency_ms_p90"] - search_row["latency_ms_p90"]))
    print()
    print(table(["model", "val acc", "test acc", "p50 ms", "p90 ms", "MB"],
                [[r["model"], f"{r['accuracy_val']:.4f}", f"{r['accuracy_test']:.4f}",
                  f"{r['latency_ms_p50']:.4f}", f"{r['latency_ms_p90']:.4f}", f"{r['size_mb']:.3f}"]
                 for r in [search_row, *rows]]))
    print(f"\nat about the same latency: search {search_row['accuracy_test']:.4f} test accuracy at "
          f"p90 {search_row['latency_ms_p90']:.4f} ms vs {matched['model']} "
          f"{matched['accuracy_test']:.4f} at {matched['latency_ms_p90']:.4f} ms "
          f"(latency ratio {matched['latency_ms_p90'] / search_row['latency_ms_p90']:.2f})")
    save("uniform_baseline", {
        "command": f".venv/bin/python benchmarks/uniform_baseline.py {run_dir}",
        "budgets": study.user_attrs.get("budgets"), "search_best": search_row,
        "uniform": rows, "latency_matched_uniform": matched["model"],
        "accuracy_test_difference": search_row["accuracy_test"] - matched["accuracy_test"],
        "latency_p90_ratio_uniform_over_search": matched["latency_ms_p90"] / search_row["latency_ms_p90"],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
