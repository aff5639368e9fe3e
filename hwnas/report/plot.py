"""Pareto plots (PNG): validation accuracy against each measured objective, budgets as lines;
axes labelled by the metric registry (hwnas/metrics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hwnas import metrics
from hwnas.records import TrialOutcome, TrialStage

if TYPE_CHECKING:
    from hwnas.report.tables import Report

def plot_metrics(report: "Report") -> list[str]:
    """The objectives after accuracy, then every budgeted metric the trials have figures for."""
    wanted = list(report.study.objectives[1:]) or ["latency_p90_ms"]
    for name, _ in report.study.budgets:
        if name not in wanted and any(report.figure(o, name) is not None for o in report.outcomes):
            wanted.append(name)
    return wanted


def base_point(report: "Report", metric: str) -> tuple[float, float] | None:
    """The base model as a point: its figure on the device against its test accuracy (the
    only accuracy recorded of it), or None where the search did not measure it."""
    figure = report.base_figure(metric)
    if figure is None:
        return None
    return figure, report.study.base_model_test_accuracy


BASE_LABEL = "base model (test accuracy)"


def pareto_plots(report: "Report", out_dir: Path) -> list[Path]:
    """pareto.png for the first objective pair, pareto_<metric>.png for the others."""
    return [pareto_plot(report, metric, out_dir / ("pareto.png" if index == 0 else
                                                    f"pareto_{metric}.png"))
            for index, metric in enumerate(plot_metrics(report))]


def pareto_plot(report: "Report", metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, _ = pareto_figure(report, metric)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")  # the legend outside the axes is kept whole
    plt.close(figure)
    return path


def pareto_figure(report: "Report", metric: str):  # type: ignore[no-untyped-def]
    """The figure and its axes (the caller saves and closes it): trials, front, base model
    (a black star), budget line, and a legend right of the axes."""
    import matplotlib.pyplot as plt

    def x(outcome: TrialOutcome) -> float:
        return report.figure(outcome, metric)  # type: ignore[return-value]

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=120)
    evaluated = [o for o in report.outcomes
                 if o.stage == TrialStage.EVALUATED and report.figure(o, metric) is not None]
    front = sorted((o for o in evaluated if report.on_front(o)), key=x)
    groups = [("meets budgets", [o for o in evaluated if o.feasible and not report.on_front(o)],
               "tab:blue", "o"),
              ("breaks a budget", [o for o in evaluated if not o.feasible], "tab:red", "x"),
              ("Pareto front", front, "tab:green", "D")]
    for label, members, color, marker in groups:
        if members:
            axes.scatter([x(o) for o in members], [o.accuracy_val for o in members],
                         c=color, marker=marker, label=label, zorder=3)
    if len(front) > 1:
        axes.plot([x(o) for o in front], [o.accuracy_val for o in front], c="tab:green", zorder=2)
    rejected = [o for o in report.outcomes
                if o.stage == TrialStage.REJECTED and report.figure(o, metric) is not None]
    if rejected:
        low = min([o.accuracy_val for o in evaluated] or [0.0])  # type: ignore[type-var]
        axes.scatter([x(o) for o in rejected], [low] * len(rejected), c="grey", marker="|",
                     label="rejected before fine-tune (measured only)", zorder=1)
    base = base_point(report, metric)
    if base is not None:
        axes.scatter([base[0]], [base[1]], c="black", marker="*", s=160, label=BASE_LABEL,
                     zorder=4, gid="base-model")
    known = metrics.find(metric)  # a plug-in's metric not installed here: its bare name
    budget = report.study.budget(metric)
    if budget:
        floor = report.study.is_floor(metric)
        axes.axvline(budget, color="tab:red", linestyle="--",
                     label=f"{metric} {'floor' if floor else 'budget'}")
    axes.set_xlabel(known.axis(report.study.energy_basis) if known is not None else metric)
    axes.set_ylabel(metrics.get("accuracy").axis())
    axes.set_title(report.name, fontsize=10)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:  # none when no trial was measured: no warning
        # outside the axes, right of them: a legend never hides a point
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure, axes
