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

from hwnas.records import StudyRecord, TrialStage  # noqa: E402
from hwnas.run import RunFolder, outcomes  # noqa: E402

PHASES = ["prune", "finetune", "quantize_export", "evaluate", "ship", "measure"]


def main() -> int:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion-mnist-cnn--local")
    study = RunFolder.load(run_dir).open_study()
    trials = [o for o in outcomes(study) if o.timings_s]
    rejected = [o for o in trials if o.stage == TrialStage.REJECTED]
    evaluated = [o for o in trials if o.stage == TrialStage.EVALUATED]

    def total(outcome) -> float:  # type: ignore[no-untyped-def]
        return sum(seconds for _, seconds in outcome.timings_s)

    rows, figures = [], {}
    for group_name, group in (("evaluated", evaluated), ("rejected", rejected)):
        figures[group_name] = {}
        for phase in PHASES:
            values = [dict(o.timings_s).get(phase, 0.0) for o in group]
            totals = [total(o) for o in group]
            share = sum(values) / sum(totals) if sum(totals) else 0.0
            figures[group_name][phase] = {"median_s": median(values), "total_s": sum(values),
                                          "share_of_trial_time": share}
            rows.append([group_name, phase, f"{median(values):.3f}", f"{sum(values):.1f}",
                         f"{100 * share:.1f}%"])
    per_trial = [total(o) for o in trials]
    print(f"study {study.study_name}: {len(trials)} trials, {len(evaluated)} evaluated, "
          f"{len(rejected)} rejected before fine-tuning "
          f"({100 * len(rejected) / max(1, len(trials)):.0f}%)\n")
    print(table(["trials", "phase", "median s", "total s", "share"], rows))
    evaluated_s, rejected_s = median([total(o) for o in evaluated]), median([total(o) for o in rejected])
    saved_s = evaluated_s - rejected_s if rejected else 0.0
    print(f"\nmedian trial: evaluated {evaluated_s:.1f} s, rejected {rejected_s:.1f} s "
          f"(early rejection saves ~{saved_s:.1f} s per rejected candidate)")
    save("trial_time_split", {
        "command": f".venv/bin/python benchmarks/trial_time_split.py {run_dir}",
        "study": study.study_name, "trials": len(trials), "evaluated": len(evaluated),
        "rejected_before_finetune": len(rejected),
        "rejected_share": len(rejected) / max(1, len(trials)),
        "median_trial_s": median(per_trial), "phases": figures,
        "budgets": dict(StudyRecord.from_study(study).budgets),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
