"""The trial table (terminal and Markdown) and the report files of a search."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from hwnas.records import StudyRecord, TrialOutcome, TrialStage
from hwnas.run import best_feasible, outcomes, pareto_front, study_directions


@dataclasses.dataclass(frozen=True)
class Report:
    """A study read once: its shared record, every trial's outcome, and the front."""

    name: str
    study: StudyRecord
    outcomes: tuple[TrialOutcome, ...]
    front: tuple[TrialOutcome, ...]  # feasible and not dominated

    @classmethod
    def of(cls, study: optuna.Study) -> "Report":
        found = outcomes(study)
        return cls(study.study_name, StudyRecord.from_study(study), tuple(found),
                   tuple(pareto_front(found, study_directions(study))))

    @property
    def best(self) -> TrialOutcome | None:
        return best_feasible(self.outcomes)

    def on_front(self, outcome: TrialOutcome) -> bool:
        return any(o.number == outcome.number for o in self.front)

    def count(self, stage: TrialStage) -> int:
        return sum(o.stage == stage for o in self.outcomes)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADERS = ["trial", "stage", "budget", "val acc", "test acc", "p50 ms", "p90 ms", "MB", "candidate",
           "note"]


def _cells(outcome: TrialOutcome) -> list[str]:
    measurement = outcome.measurement
    budget = "meets" if outcome.feasible else (
        "-" if outcome.stage in (TrialStage.FAILED, TrialStage.RUNNING, TrialStage.WAITING)
        else "breaks")
    note = outcome.failure or outcome.rejection or ""
    return [str(outcome.number), outcome.stage.value, budget,
            _fmt(outcome.accuracy_val, ".4f"), _fmt(outcome.accuracy_test, ".4f"),
            _fmt(measurement.latency_ms_p50 if measurement else None, ".3f"),
            _fmt(measurement.latency_ms_p90 if measurement else None, ".3f"),
            _fmt(outcome.artifact.size_mb if outcome.artifact else None, ".3f"),
            outcome.summary(), note[:120]]


def text_table(rows: list[TrialOutcome] | tuple[TrialOutcome, ...]) -> str:
    table = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows: tuple[TrialOutcome, ...] | list[TrialOutcome]) -> list[str]:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return out


def markdown_report(report: Report, plot_name: str) -> str:
    record, best = report.study, report.best
    budgets = ", ".join(f"{name} <= {limit:g}" for name, limit in record.budgets) or "none"
    lines = [f"# hwnas report: {report.name}", "",
             f"- budgets: {budgets}",
             f"- base model test accuracy (PyTorch): {record.base_model_test_accuracy:.4f}",
             f"- trials: {len(report.outcomes)}, evaluated: {report.count(TrialStage.EVALUATED)}, "
             f"rejected before fine-tune: {report.count(TrialStage.REJECTED)}, "
             f"failed: {report.count(TrialStage.FAILED)}"]
    if best is not None:
        lines.append(f"- best feasible: trial {best.number}, validation accuracy "
                     f"{best.accuracy_val:.4f}, test accuracy {best.accuracy_test:.4f}")
    lines += ["", f"![Pareto front]({plot_name})", "", "## Pareto front (meets every budget)", ""]
    lines += _markdown_table(report.front) + ["", "## All trials", ""]
    lines += _markdown_table(report.outcomes)
    lines += ["", "Accuracy is measured on the exported ONNX bytes with onnxruntime; latency by "
              "hwnas-agent on the device. Rejected candidates were never fine-tuned or "
              "evaluated: their accuracy is unknown, not zero."]
    return "\n".join(lines) + "\n"


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    from hwnas.report.html import html_report
    from hwnas.report.plot import pareto_plot

    report = Report.of(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = pareto_plot(report, out_dir / "pareto.png")
    markdown = markdown_report(report, plot.name)
    md_path = out_dir / "report.md"
    md_path.write_text(markdown)
    html_path = out_dir / "report.html"
    html_path.write_text(html_report(markdown, report.name))
    return {"plot": plot, "markdown": md_path, "html": html_path}
