"""Reports of a search: Pareto table (terminal), Pareto plot (PNG), Markdown and HTML."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hwnas.records import Candidate
from hwnas.search.progress import is_feasible


@dataclasses.dataclass(frozen=True)
class TrialRow:
    number: int
    stage: str  # evaluated | rejected_before_finetune | failed | running
    feasible: bool
    on_front: bool
    accuracy_val: float | None
    accuracy_test: float | None
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    size_mb: float | None
    candidate: str
    sha256: str | None


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    front = {t.number for t in study.best_trials if is_feasible(t)}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        measurement = attrs.get("measurement") or {}
        latency = measurement.get("latency_ms", {})
        artifact = attrs.get("artifact") or {}
        stage = attrs.get("stage") if trial.state == TrialState.COMPLETE else trial.state.name.lower()
        candidate = Candidate.from_dict(attrs["candidate"]).summary() if "candidate" in attrs else ""
        rows.append(TrialRow(
            number=trial.number, stage=stage or "unknown", feasible=is_feasible(trial),
            on_front=trial.number in front, accuracy_val=attrs.get("accuracy_val"),
            accuracy_test=attrs.get("accuracy_test"), latency_ms_p50=latency.get("p50"),
            latency_ms_p90=latency.get("p90"),
            size_mb=artifact["size_bytes"] / 1e6 if "size_bytes" in artifact else None,
            candidate=candidate, sha256=artifact.get("sha256"),
        ))
    return rows


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The most accurate trial meeting every budget (accuracy is the first objective)."""
    feasible = [t for t in study.best_trials if is_feasible(t)
                and t.user_attrs.get("stage") == "evaluated"]
    return max(feasible, key=lambda t: t.values[0], default=None)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADERS = ["trial", "stage", "budget", "val acc", "test acc", "p50 ms", "p90 ms", "MB", "candidate"]


def _cells(row: TrialRow) -> list[str]:
    return [str(row.number), row.stage, "meets" if row.feasible else "breaks",
            _fmt(row.accuracy_val, ".4f"), _fmt(row.accuracy_test, ".4f"),
            _fmt(row.latency_ms_p50, ".3f"), _fmt(row.latency_ms_p90, ".3f"),
            _fmt(row.size_mb, ".3f"), row.candidate]


def text_table(rows: list[TrialRow]) -> str:
    table = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pareto_plot(rows: list[TrialRow], budgets: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    evaluated = [r for r in rows if r.accuracy_val is not None and r.latency_ms_p90 is not None]
    groups = [("meets budgets", [r for r in evaluated if r.feasible and not r.on_front], "tab:blue", "o"),
              ("breaks a budget", [r for r in evaluated if not r.feasible], "tab:red", "x"),
              ("Pareto front", sorted([r for r in evaluated if r.on_front],
                                      key=lambda r: r.latency_ms_p90 or 0), "tab:green", "D")]
    for label, members, color, marker in groups:
        if members:
            axes.scatter([r.latency_ms_p90 for r in members], [r.accuracy_val for r in members],
                         c=color, marker=marker, label=label, zorder=3)
    front = groups[2][1]
    if len(front) > 1:
        axes.plot([r.latency_ms_p90 for r in front], [r.accuracy_val for r in front],
                  c="tab:green", zorder=2)
    rejected = [r for r in rows if r.stage == "rejected_before_finetune" and r.latency_ms_p90]
    if rejected:
        low = min([r.accuracy_val for r in evaluated] or [0.0])
        axes.scatter([r.latency_ms_p90 for r in rejected], [low] * len(rejected), c="grey",
                     marker="|", label="rejected before fine-tune (latency only)", zorder=1)
    if budgets.get("latency_p90_ms"):
        axes.axvline(budgets["latency_p90_ms"], color="tab:red", linestyle="--",
                     label="latency budget")
    axes.set_xlabel("measured latency p90 (ms)")
    axes.set_ylabel("validation accuracy (exported ONNX)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def markdown_report(study: optuna.Study, rows: list[TrialRow], plot_name: str) -> str:
    budgets = study.user_attrs.get("budgets", {})
    base = study.user_attrs.get("base_model", {})
    best = best_feasible(study)
    lines = [f"# hwnas report: {study.study_name}", "",
             f"- budgets: latency p90 <= {budgets.get('latency_p90_ms')} ms, "
             f"model size <= {budgets.get('model_size_mb')} MB",
             f"- base model test accuracy (PyTorch): {base.get('test_accuracy')}",
             f"- trials: {len(rows)}, evaluated: {sum(r.stage == 'evaluated' for r in rows)}, "
             f"rejected before fine-tune: {sum(r.stage == 'rejected_before_finetune' for r in rows)}"]
    if best is not None:
        lines.append(f"- best feasible: trial {best.number}, validation accuracy "
                     f"{best.values[0]:.4f}, test accuracy {best.user_attrs.get('accuracy_test', 0):.4f}")
    lines += ["", f"![Pareto front]({plot_name})", "", "## Pareto front (meets every budget)", ""]
    front = [r for r in rows if r.on_front]
    lines += _markdown_table(front) + ["", "## All trials", ""] + _markdown_table(rows)
    lines += ["", "Accuracy is measured on the exported ONNX bytes with onnxruntime; latency by "
              "hwnas-agent on the device. Rejected candidates were never fine-tuned or "
              "evaluated: their accuracy is unknown, not zero."]
    return "\n".join(lines) + "\n"


def _markdown_table(rows: list[TrialRow]) -> list[str]:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return out


def html_report(markdown: str, title: str) -> str:
    """A dependency-free HTML rendering of the Markdown report (tables, headings, image)."""
    body = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            source = line[line.index("(") + 1:-1]
            body.append(f'<img src="{html.escape(source)}" alt="Pareto front">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    rows = trial_rows(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = pareto_plot(rows, study.user_attrs.get("budgets", {}), out_dir / "pareto.png",
                       study.study_name)
    markdown = markdown_report(study, rows, plot.name)
    md_path = out_dir / "report.md"
    md_path.write_text(markdown)
    html_path = out_dir / "report.html"
    html_path.write_text(html_report(markdown, study.study_name))
    return {"plot": plot, "markdown": md_path, "html": html_path}
