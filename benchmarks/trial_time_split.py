"""Where a trial's time goes in a search, and how many candidates are rejected before fine-tuning.

    .venv/bin/python benchmarks/trial_time_split.py [RUN_DIR]

RUN_DIR defaults to the default search's folder (runs/fashion-mnist-cnn--local): run
`.venv/bin/hwnas search` first. Reads the per-phase timings every trial stores.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, save, table  # noqa: E402

from hwnas.search import RunInfo  # noqa: E402

PHASES = ["prune", "finetune", "quantize_export", "evaluate", "ship", "measure"]


def main() -> int:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion-mnist-cnn--local")
    study = RunInfo.load(run_dir).open_study()
    trials = [t for t in study.get_trials() if t.user_attrs.get("timings_s")]
    rejected = [t for t in trials if t.user_attrs.get("stage") == "rejected_before_finetune"]
    evaluated = [t for t in trials if t.user_attrs.get("stage") == "evaluated"]
    rows, figures = [], {}
    for group_name, group in (("evaluated", evaluated), ("rejected", rejected)):
        figures[group_name] = {}
        for phase in PHASES:
            values = [t.user_attrs["timings_s"].get(phase, 0.0) for t in group]
            totals = [sum(t.user_attrs["timings_s"].values()) for t in group]
            share = sum(values) / sum(totals) if sum(totals) else 0.0
            figures[group_name][phase] = {"median_s": median(values), "total_s": sum(values),
                                          "share_of_trial_time": share}
            rows.append([group_name, phase, f"{median(values):.3f}", f"{sum(values):.1f}",
                         f"{100 * share:.1f}%"])
    per_trial = [sum(t.user_attrs["timings_s"].values()) for t in trials]
    print(f"study {study.study_name}: {len(trials)} trials, {len(evaluated)} evaluated, "
          f"{len(rejected)} rejected before fine-tuning "
          f"({100 * len(rejected) / max(1, len(trials)):.0f}%)\n")
    print(table(["trials", "phase", "median s", "total s", "share"], rows))
    saved_s = (median([sum(t.user_attrs['timings_s'].values()) for t in evaluated])
               - median([sum(t.user_attrs['timings_s'].values()) for t in rejected])) if rejected else 0.0
    print(f"\nmedian trial: evaluated {median([sum(t.user_attrs['timings_s'].values()) for t in evaluated]):.1f} s, "
          f"rejected {median([sum(t.user_attrs['timings_s'].values()) for t in rejected]):.1f} s "
          f"(early rejection saves ~{saved_s:.1f} s per rejected candidate)")
    save("trial_time_split", {
        "command": f".venv/bin/python benchmarks/trial_time_split.py {run_dir}",
        "study": study.study_name, "trials": len(trials), "evaluated": len(evaluated),
        "rejected_before_finetune": len(rejected),
        "rejected_share": len(rejected) / max(1, len(trials)),
        "median_trial_s": median(per_trial), "phases": figures,
        "budgets": study.user_attrs.get("budgets"),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
