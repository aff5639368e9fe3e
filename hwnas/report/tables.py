"""The trial table (terminal and Markdown) and the report files of a search.

Its metric columns come from the metric registry (hwnas/metrics.py): the ones marked
``shown`` (latency, size; power where a sensor measured), then every metric the study's
objectives or budgets name (peak memory, a plug-in's)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna

from hwnas import metrics
from hwnas.budgets import budget_text, measured
from hwnas.layers import UnitTime, kept_unit_times, layers_table
from hwnas.sensitivity import UnitSensitivity, sensitivity_table
from hwnas.sensitivity import kept as kept_sensitivity
from hwnas.metrics import Metric
from hwnas.records import Artifact, StudyRecord, TrialOutcome, TrialStage
from hwnas.run import outcomes
from hwnas.pareto import best_feasible, pareto_front, study_directions


@dataclasses.dataclass(frozen=True)
class Report:
    """A study read once: its shared record, every trial's outcome, and the front."""

    name: str
    study: StudyRecord
    outcomes: tuple[TrialOutcome, ...]
    front: tuple[TrialOutcome, ...]  # feasible and not dominated
    # the base and the best model's time per module on the device (hwnas.layers)
    unit_times: tuple[tuple[str, Any, tuple[UnitTime, ...]], ...] = ()
    # each unit changed alone: fidelity and accuracy drop (hwnas.sensitivity)
    sensitivity: tuple[UnitSensitivity, ...] = ()

    @classmethod
    def of(cls, study: optuna.Study) -> "Report":
        found = outcomes(study)
        return cls(study.study_name, StudyRecord.from_study(study), tuple(found),
                   tuple(pareto_front(found, study_directions(study))),
                   tuple(kept_unit_times(study.user_attrs)),
                   tuple(kept_sensitivity(study.user_attrs)))

    @property
    def best(self) -> TrialOutcome | None:
        return best_feasible(self.front)  # a tie in accuracy goes to the front model

    def on_front(self, outcome: TrialOutcome) -> bool:
        return any(o.number == outcome.number for o in self.front)

    def count(self, stage: TrialStage) -> int:
        return sum(o.stage == stage for o in self.outcomes)

    def figure(self, outcome: TrialOutcome, metric: str) -> float | None:
        """A measured figure of a trial (None where it was not measured; a simulator's latency
        is not a measured latency)."""
        if outcome.measurement is None or outcome.artifact is None:
            return None
        known = metrics.find(metric)
        if outcome.measurement.emulated and (known is None or known.device_only):
            return None
        return measured(outcome.measurement, outcome.artifact, self.study.energy_basis).get(metric)

    def base_figure(self, metric: str) -> float | None:
        """The base model's figure for a metric, where the search measured it on the device
        (None otherwise: the plots then draw no base point for that axis)."""
        base = self.study.base_model_measurement
        known = metrics.find(metric)
        if base is None or (base.emulated and (known is None or known.device_only)):
            return None
        if known is not None and known.source == "artifact" and \
                self.study.base_model_size_bytes is None:
            return None
        artifact = Artifact("", base.model_sha256, self.study.base_model_size_bytes or 0, (), 0)
        return metrics.values(base, artifact, self.study.energy_basis).get(metric)

    def columns(self) -> list[Metric]:
        """The metrics the table shows, in the registry's order."""
        named = set(self.study.objectives) | {name for name, _ in self.study.budgets}
        return [m for m in metrics.all_metrics() if m.source != "evaluation" and (
            (m.shown and (self.has_power or not m.needs_power)) or m.name in named)]

    @property
    def has_emulated(self) -> bool:
        return any(o.measurement is not None and o.measurement.emulated for o in self.outcomes)

    @property
    def has_power(self) -> bool:
        return any(o.measurement is not None and o.measurement.power is not None
                   for o in self.outcomes)

    def power_sources(self) -> list[str]:
        """How the power figures were obtained, one line per device and sensor."""
        seen: dict[tuple[str, str], str] = {}
        for o in self.outcomes:
            if o.measurement is not None and o.measurement.power is not None:
                power = o.measurement.power
                seen.setdefault((o.measurement.device, power.source),
                                f"{o.measurement.device}: {power.describe()}")
        return list(seen.values())


def fmt(value: float | None, spec: str) -> str:
    """A table cell: the figure, or '-' where the trial has none."""
    return "-" if value is None else format(value, spec)


# output fidelity against the fp32 parent: mean and worst cosine, arg-max agreement
HEADERS = ["trial", "stage", "budget", "val acc", "test acc", "fidelity cos", "cos min",
           "top-1 agree"]
EMULATED = "emulated"  # in a device-only cell: a simulator's figure is not the device's
TAIL_HEADERS = ["candidate", "note"]


def columns(report: "Report | None") -> list[Metric]:
    if report is not None:
        return report.columns()
    return [m for m in metrics.all_metrics()
            if m.source != "evaluation" and m.shown and not m.needs_power]


def headers(report: "Report | None") -> list[str]:
    basis = report.study.energy_basis if report is not None else "total"
    return HEADERS + [m.header(basis) for m in columns(report)] + TAIL_HEADERS


def _figure(outcome: TrialOutcome, metric: Metric, report: "Report | None") -> str:
    measurement = outcome.measurement
    if measurement is not None and measurement.emulated and metric.device_only:
        return EMULATED
    if measurement is None or outcome.artifact is None:
        return "-"
    basis = report.study.energy_basis if report is not None else "total"
    return fmt(metric.value(measurement, outcome.artifact, basis), metric.spec)


def row_cells(outcome: TrialOutcome, report: "Report | None") -> list[str]:
    budget = "meets" if outcome.feasible else (
        "-" if outcome.stage in (TrialStage.FAILED, TrialStage.RUNNING, TrialStage.WAITING)
        else "breaks")
    note = "; ".join(filter(None, [outcome.failure or outcome.rejection or "",
                                   outcome.finetune.cut_short() if outcome.finetune else ""]))
    stage = outcome.stage.value
    if outcome.finalized_from is not None:  # a longer fine-tune of a search trial's candidate
        stage = f"finalized ({outcome.finetune.steps if outcome.finetune else '?'} steps)"
        note = f"finalized from trial {outcome.finalized_from}" + (f"; {note}" if note else "")
    cells = [str(outcome.number), stage, budget,
             fmt(outcome.accuracy_val, ".4f"), fmt(outcome.accuracy_test, ".4f"),
             *fidelity_cells(outcome)]
    cells += [_figure(outcome, metric, report) for metric in columns(report)]
    return cells + [outcome.summary(), note[:120]]


def fidelity_cells(outcome: TrialOutcome) -> list[str]:
    fidelity = outcome.output_fidelity
    if fidelity is None:
        return ["-", "-", "-"]
    return [fmt(fidelity.cosine_mean, ".5f"), fmt(fidelity.cosine_min, ".4f"),
            fmt(fidelity.top1_agreement, ".1%")]


def text_table(rows: list[TrialOutcome] | tuple[TrialOutcome, ...],
               report: "Report | None" = None) -> str:
    return aligned([headers(report)] + [row_cells(r, report) for r in rows])


def aligned(table: list[list[str]]) -> str:
    """A header row and its cells as aligned text columns, a rule under the header."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows: tuple[TrialOutcome, ...] | list[TrialOutcome], report: "Report") -> list[str]:
    names = headers(report)
    out = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r, report)) + " |" for r in rows]
    return out


TOP_UNITS = 8  # modules per model in the report's time table


def markdown_report(report: Report, plots: list[Path]) -> str:
    record, best = report.study, report.best
    budgets = ", ".join(budget_text(name, limit, record.is_floor(name))
                        for name, limit in record.budgets) or "none"
    lines = [f"# hwnas report: {report.name}", "",
             f"- budgets: {budgets}",
             f"- base model test accuracy (PyTorch): {record.base_model_test_accuracy:.4f}",
             f"- trials: {len(report.outcomes)}, evaluated: {report.count(TrialStage.EVALUATED)}, "
             f"rejected before fine-tune: {report.count(TrialStage.REJECTED)}, "
             f"failed: {report.count(TrialStage.FAILED)}"]
    finalized = [o for o in report.outcomes if o.finalized_from is not None]
    if finalized:
        lines.append("- finalized (fine-tuned again to full fidelity by `hwnas finalize`, "
                     "bytes measured again): " + ", ".join(
                         f"trial {o.number} from trial {o.finalized_from}" for o in finalized))
    if report.has_power:
        lines.append(f"- power: measured by the device's sensor during sustained inference; "
                     f"energy per inference basis: {record.energy_basis}")
        lines += [f"- power source of {line}" for line in report.power_sources()]
    if best is not None:
        finished = f" (finalized from trial {best.finalized_from})" \
            if best.finalized_from is not None else ""
        lines.append(f"- best feasible: trial {best.number}{finished}, validation accuracy "
                     f"{best.accuracy_val:.4f}, test accuracy {best.accuracy_test:.4f}")
    elif any(o.stage == TrialStage.EVALUATED for o in report.outcomes) or \
            report.count(TrialStage.REJECTED):
        lines.append(f"- no trial meets every budget: {why_nothing_fits(report)}")
    lines.append("")
    lines += [f"![Pareto front]({plot.name})" for plot in plots]
    lines += ["", "## Pareto front (meets every budget)", ""]
    lines += _markdown_table(report.front, report) + ["", "## All trials", ""]
    lines += _markdown_table(report.outcomes, report)
    if report.unit_times:
        lines += ["", "## Where the time goes (per module, on the device)", "",
                  "Per-node times of profiled runs after the timed ones, summed per module "
                  "(`hwnas profile MODEL --layers` does this for any ONNX file).", "", "```",
                  layers_table(report.unit_times, TOP_UNITS), "```"]
    for found in report.sensitivity:
        lines += ["", "## Per-unit sensitivity (each unit changed alone, no fine-tune)", "",
                  "```", sensitivity_table(found), "```"]
    lines += ["", "Accuracy is measured on the exported ONNX bytes with onnxruntime; latency, "
              "peak memory and power by hwnas-agent on the device. Fidelity is the cosine similarity (mean and "
              "worst sample) and the top-1 (arg-max) agreement of a trial's outputs with its fp32 parent's (the same model without a precision plan) on "
              "held-out data, computed where the device's execution providers run. Rejected "
              "candidates were never fine-tuned or evaluated: their accuracy is unknown, not zero."]
    if report.has_emulated:
        lines.append(f"Cells marked '{EMULATED}' come from a simulator of the accelerator (e.g. "
                     "Qualcomm's HTP simulated on x86): it checked that the graph compiles for the "
                     "accelerator and gave the fidelity, never a device latency.")
    return "\n".join(lines) + "\n"


def why_nothing_fits(report: Report) -> str:
    """Which budgets the trials broke, and the best figure reached for each."""
    broken: dict[str, float] = {}
    for outcome in report.outcomes:
        for name, value in outcome.constraints:
            if value > 0:
                broken[name] = min(broken.get(name, float("inf")), value)
    if not broken:
        return "no trial was evaluated within the budgets yet"
    limits = dict(report.study.budgets)
    parts = []
    for name, excess in sorted(broken.items()):
        # the fidelity floor's excess is of the distance from identical outputs: over
        floor = report.study.is_floor(name) and name != "fidelity_cosine_min"
        parts.append(f"{name} (budget {limits.get(name, float('nan')):g}; the closest trial is "
                     f"{excess:.0%} {'under' if floor else 'over'})")
    return "budgets broken: " + ", ".join(parts)

