"""The Pareto plot (PNG): measured latency vs validation accuracy, budgets as lines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.records import TrialStage

if TYPE_CHECKING:
    from hwnas.report.tables import Report


def pareto_plot(report: "Report", path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def p90(outcome) -> float:  # type: ignore[no-untyped-def]
        return outcome.measurement.latency_ms_p90

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    evaluated = [o for o in report.outcomes
                 if o.stage == TrialStage.EVALUATED and o.measurement is not None]
    front = sorted((o for o in evaluated if report.on_front(o)), key=p90)
    groups = [("meets budgets", [o for o in evaluated if o.feasible and not report.on_front(o)],
               "tab:blue", "o"),
              ("breaks a budget", [o for o in evaluated if not o.feasible], "tab:red", "x"),
              ("Pareto front", front, "tab:green", "D")]
    for label, members, color, marker in groups:
        if members:
            axes.scatter([p90(o) for o in members], [o.accuracy_val for o in members],
                         c=color, marker=marker, label=label, zorder=3)
    if len(front) > 1:
        axes.plot([p90(o) for o in front], [o.accuracy_val for o in front], c="tab:green", zorder=2)
    rejected = [o for o in report.outcomes
                if o.stage == TrialStage.REJECTED and o.measurement is not None]
    if rejected:
        low = min([o.accuracy_val for o in evaluated] or [0.0])
        axes.scatter([p90(o) for o in rejected], [low] * len(rejected), c="grey",
                     marker="|", label="rejected before fine-tune (latency only)", zorder=1)
    budget = report.study.budget("latency_p90_ms")
    if budget:
        axes.axvline(budget, color="tab:red", linestyle="--", label="latency budget")
    axes.set_xlabel("measured latency p90 (ms)")
    axes.set_ylabel("validation accuracy (exported ONNX)")
    axes.set_title(report.name, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
