"""The search's best feasible model against uniform pruning at about the same measured latency.

    .venv/bin/python benchmarks/uniform_baseline.py [RUN_DIR]

The baseline: the same keep ratio in every stage, L1 magnitude, no global pruning, and every
stage at one precision, int8 (the usual "prune uniformly, then quantize" recipe) or fp32,
fine-tuned with the same distillation budget and evaluated the same way; the baseline
reported is the uniform model whose measured latency is closest to the search's best. Every model, the search's winner included,
is measured again in this one run by the same agent, so latencies are compared side by side.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402

from hwnas.compress.finetune import finetune  # noqa: E402
from hwnas.evaluate import onnx_split_accuracy  # noqa: E402
from hwnas.records import Candidate, StudyRecord  # noqa: E402
from hwnas.run import RunFolder, best_feasible, device_file, outcomes  # noqa: E402
from hwnas.search import open_pool, prepare, trial_context  # noqa: E402
from hwnas.search.objective import CandidateBuilder, DeviceLease, Timings, TrialMeasurer  # noqa: E402

KEEP_RATIOS = [0.25, 0.375, 0.5, 0.75]
PRECISIONS = ["fp32", "int8"]


def main() -> int:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion-mnist-cnn--local")
    run = RunFolder.load(run_dir)
    study = run.open_study()
    best = best_feasible(outcomes(study))
    if best is None:
        print("no feasible trial in this study yet")
        return 1
    configs = run_dir / "configs" / best.config_version
    prepared = prepare(configs / "search_space.yaml", configs / device_file(0))
    work = RunFolder(run_dir / "benchmark-uniform", run.storage_url, run.study_name)
    rows = []
    with open_pool(prepared.devices) as pool:
        builder = CandidateBuilder(trial_context(prepared, pool, work))
        measurer = TrialMeasurer(DeviceLease(pool), Timings())
        best_artifact = run.kept_artifact(best, study)
        best_measured = measurer.measure(best_artifact)
        search_row = {"model": f"search trial {best.number}", "candidate": best.summary(),
                      "accuracy_val": best.accuracy_val, "accuracy_test": best.accuracy_test,
                      "latency_ms_p50": best_measured.latency_ms_p50,
                      "latency_ms_p90": best_measured.latency_ms_p90,
                      "size_mb": best_artifact.size_mb}
        for keep, precision in [(k, p) for p in PRECISIONS for k in KEEP_RATIOS]:
            stages = prepared.shape.stages
            candidate = Candidate.build({s: keep for s in stages}, "l1", 0.0,
                                        {u: precision for u in prepared.shape.precision_units})
            model = builder.prune(candidate)
            finetune(model, prepared.base.module, prepared.task, prepared.space.finetune, seed=0)
            artifact = builder.export(model, candidate, work.path / f"uniform-{keep}-{precision}.onnx")
            measured = measurer.measure(artifact)
            rows.append({"model": f"uniform keep {keep:g} {precision}", "candidate": candidate.summary(),
                         "accuracy_val": onnx_split_accuracy(artifact, prepared.task.validation),
                         "accuracy_test": onnx_split_accuracy(artifact, prepared.task.test),
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
        "budgets": dict(StudyRecord.from_study(study).budgets), "search_best": search_row,
        "uniform": rows, "latency_matched_uniform": matched["model"],
        "accuracy_test_difference": search_row["accuracy_test"] - matched["accuracy_test"],
        "latency_p90_ratio_uniform_over_search": matched["latency_ms_p90"] / search_row["latency_ms_p90"],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
