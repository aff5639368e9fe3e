"""The HTML report of an image model's search: one self-contained page an engineer reads.

Plots inline, the base model a point on each; the front as sortable rows, each model drawn
unit by unit (picture.py); why trials failed, were rejected or broke a budget; where the
power figures came from; and, per front trial, its model card or the command that writes it."""

from __future__ import annotations

import html
import os
from pathlib import Path

from hwnas.budgets import budget_text
from hwnas.layers import layers_table
from hwnas.records import TrialOutcome, TrialStage
from hwnas.report.heatmap import sensitivity_section
from hwnas.report.html import image, page, table
from hwnas.report.picture import colour_key, unit_svg
from hwnas.report.tables import EMULATED, TOP_UNITS, Report, fmt, headers, row_cells, why_nothing_fits


def budget_breaks(report: Report, outcome: TrialOutcome) -> str:
    """Each budget a trial broke, and by how much ("latency_p90_ms over by 35%")."""
    return ", ".join(
        f"{name} {'under' if report.study.is_floor(name) and name != 'fidelity_cosine_min' else 'over'}"
        f" by {value:.0%}" for name, value in outcome.constraints if value > 0)


def model_link(report: Report, outcome: TrialOutcome, run_dir: Path, out_dir: Path) -> str:
    """Relative links to the trial's model card and ONNX where `hwnas export` wrote them, else
    the command that writes them (and a link to the measured bytes in the run's cache)."""
    exported = run_dir / "exported"
    card = exported / f"{report.name}-trial{outcome.number}.card.json"
    model = card.with_name(card.name.replace(".card.json", ".onnx"))
    if card.is_file():
        links = [(card, "model card")] + ([(model, "ONNX")] if model.is_file() else [])
        return " ".join(f'<a href="{html.escape(_relative(path, out_dir))}">{label}</a>'
                        for path, label in links)
    command = f"<code>hwnas export {html.escape(str(run_dir))} --trial {outcome.number}</code>"
    cached = run_dir / "cache" / f"{outcome.artifact.sha256}.onnx" if outcome.artifact else None
    if cached is not None and cached.is_file():  # the measured bytes, before any export
        command += f' (<a href="{html.escape(_relative(cached, out_dir))}">ONNX bytes</a>)'
    return command


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _facts(report: Report) -> list[str]:
    record, best = report.study, report.best
    budgets = ", ".join(budget_text(name, limit, record.is_floor(name))
                        for name, limit in record.budgets) or "none"
    base = f"test accuracy {record.base_model_test_accuracy:.4f} (PyTorch)"
    measured = [f"{metric.header(record.energy_basis)} {fmt(value, metric.spec)}"
                for metric in report.columns()
                if (value := report.base_figure(metric.name)) is not None]
    if measured:
        base += "; on the device: " + ", ".join(measured)
    facts = [f"budgets: {budgets}", f"base model: {base}",
             f"trials: {len(report.outcomes)}, evaluated: {report.count(TrialStage.EVALUATED)}, "
             f"rejected before fine-tune: {report.count(TrialStage.REJECTED)}, "
             f"failed: {report.count(TrialStage.FAILED)}"]
    if best is not None:
        facts.append(f"best feasible: trial {best.number}, validation accuracy "
                     f"{best.accuracy_val:.4f}, test accuracy {best.accuracy_test:.4f}")
    elif report.outcomes:
        facts.append(f"no trial meets every budget: {why_nothing_fits(report)}")
    return facts


def _trials_table(report: Report, rows: tuple[TrialOutcome, ...], run_dir: Path,
                  out_dir: Path, pictures: bool) -> str:
    names = headers(report)
    cells = [row_cells(o, report) for o in rows]
    raw: frozenset[int] = frozenset()
    if pictures:
        names = names + ["units (keep ratio, precision)", "model card"]
        for outcome, line in zip(rows, cells):
            line += [unit_svg(outcome.candidate, outcome.number) if outcome.candidate else "",
                     model_link(report, outcome, run_dir, out_dir)]
        raw = frozenset({len(names) - 2, len(names) - 1})
    classes = ["front" if report.on_front(o) else "" for o in rows]
    return table(names, cells, classes, raw)


def _reasons(report: Report) -> str:
    """Failed and rejected trials with their reasons; evaluated ones that broke a budget."""
    rows = []
    for o in report.outcomes:
        if o.stage == TrialStage.FAILED:
            rows.append([str(o.number), "failed", o.failure or "(no message recorded)"])
        elif o.stage == TrialStage.REJECTED:
            rows.append([str(o.number), "rejected before fine-tune",
                         o.rejection or budget_breaks(report, o) or "(no reason recorded)"])
        elif o.stage == TrialStage.EVALUATED and not o.feasible and budget_breaks(report, o):
            rows.append([str(o.number), "breaks a budget", budget_breaks(report, o)])
        if o.finetune is not None and o.finetune.cut_short():
            rows.append([str(o.number), "fine-tune cut short", o.finetune.cut_short()])
    if not rows:
        return "<p>No trial failed, was rejected or broke a budget.</p>"
    return table(["trial", "what happened", "reason"], rows)


def _power(report: Report) -> str:
    if not report.has_power:
        return ("<p>No power was measured (the device profile's <code>power.source</code> is "
                "<code>none</code>, or its sensor gave no figure).</p>")
    errors = sorted({f"{o.measurement.device}: {o.measurement.power_error}"
                     for o in report.outcomes
                     if o.measurement is not None and o.measurement.power_error})
    items = [f"Measured by the device's sensor during sustained inference; energy per "
             f"inference basis: {report.study.energy_basis}."]
    items += [f"Source on {line}" for line in report.power_sources()]
    items += [f"Missing on {line}" for line in errors]
    return "<ul class='facts'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def html_page(report: Report, plots: list[Path], out_dir: Path, run_dir: Path) -> str:
    """The whole report page; ``out_dir`` is where it is written (links are relative to it)."""
    parts = [f"<h1>hwnas report: {html.escape(report.name)}</h1>",
             "<ul class='facts'>" + "".join(f"<li>{html.escape(f)}</li>"
                                            for f in _facts(report)) + "</ul>"]
    if plots:
        parts += ["<h2>Accuracy against each measured figure</h2>",
                  "<p class='note'>The black star is the base model (its test accuracy; "
                  "trials are plotted at their validation accuracy); dashed lines are budgets.</p>"]
        parts += [image(plot, f"Pareto plot {plot.stem}") for plot in plots]
    parts += ["<h2>Pareto front (meets every budget)</h2>", colour_key()]
    parts.append(_trials_table(report, report.front, run_dir, out_dir, pictures=True)
                 if report.front else "<p>No trial meets every budget yet.</p>")
    parts += ["<h2>All trials</h2>", "<p class='note'>Click a column header to sort; front "
              "rows are green.</p>",
              _trials_table(report, report.outcomes, run_dir, out_dir, pictures=False),
              "<h2>Failures, rejections and broken budgets</h2>", _reasons(report),
              "<h2>Power: where the figures come from</h2>", _power(report)]
    if report.unit_times:
        parts += ["<h2>Where the time goes (per module, on the device)</h2>",
                  "<p class='note'>Per-node times of profiled runs after the timed ones, summed "
                  "per module (<code>hwnas profile MODEL --layers</code> does this for any ONNX "
                  "file).</p>",
                  f"<pre>{html.escape(layers_table(report.unit_times, TOP_UNITS))}</pre>"]
    parts += sensitivity_section(report.sensitivity)
    parts.append(
        "<h2>How to read this</h2><p class='note'>Accuracy is measured on the exported ONNX "
        "bytes with onnxruntime; latency, peak memory and power by hwnas-agent on the device. "
        "Output fidelity compares a trial's outputs with its fp32 parent's (the same model "
        "without a precision plan) on held-out data: the mean and the worst sample's cosine "
        "similarity, and the fraction of samples whose top-1 class agrees. Rejected candidates "
        "were never fine-tuned or evaluated: their accuracy is unknown, not zero.</p>")
    if report.has_emulated:
        parts.append(f"<p class='note'>Cells marked '{EMULATED}' come from a simulator of the "
                     "accelerator (e.g. Qualcomm's HTP simulated on x86): it checked that the "
                     "graph compiles for the accelerator and gave the fidelity, never a device "
                     "latency.</p>")
    return page(f"hwnas report: {report.name}", "\n".join(parts))
