"""Before any fine-tune, in plain words: do the budgets bind, and can they be met at all?

Two ends of the search space are read against the budgets: the largest model (the unpruned
base, uniform at a precision the space allows) and the smallest candidate (every structural
knob at its most aggressive value, the smallest precision throughout). If the largest already
meets every budget, the budgets do not bind: the search can only give up accuracy for margin
under them. If the smallest breaks one, no candidate is likely to meet it, and the line says
which budget and by how much. The search goes on either way: latency is measured with noise
and is not monotonic in size (a pruned model can run slower, one precision faster than
another on one device), so a warning informs and the trials decide.

Measurements come from what the search takes anyway where it can: the base model at fp32
(optimize.py measures it once per study). The base at the smallest precision, and the
smallest candidate, are measured only when the answer needs them, once per study: they are
kept in the study (attribute ``budget_reach``) and read back on resume and by every worker.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import TYPE_CHECKING, Any, Callable, Mapping

import optuna

from hwnas import metrics
from hwnas.budgets import constraint_values, describe_excess
from hwnas.errors import HwnasError
from hwnas.knobs import Candidate
from hwnas.measurement import Measurement
from hwnas.records import Artifact, StudyRecord

if TYPE_CHECKING:
    from torch import nn

    from hwnas.config.models import Budgets
    from hwnas.search.candidates import CandidateBuilder, TrialContext

#: precisions by the size of what they store and compute, smallest first
SMALLEST_FIRST = ("int8", "a16w8", "int8_weight_only", "fp16", "fp32")
ATTRIBUTE = "budget_reach"


@dataclasses.dataclass(frozen=True)
class Reference:
    """One end of the search space, exported and measured before any trial."""

    label: str  # "base" (unpruned) or "smallest" (every knob at its most aggressive)
    precision: str  # the one precision of every unit
    candidate: Candidate
    artifact: Artifact
    measurement: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "precision": self.precision,
                "candidate": self.candidate.to_dict(), "artifact": self.artifact.to_dict(),
                "measurement": self.measurement.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reference":
        return cls(data["label"], data["precision"], Candidate.from_dict(data["candidate"]),
                   Artifact.from_dict(data["artifact"]), Measurement.from_dict(data["measurement"]))

    def excess(self, budgets: "Budgets") -> dict[str, float]:
        """Budget -> relative excess (> 0: broken), fidelity aside (known after fine-tuning)."""
        return constraint_values(budgets, self.measurement, self.artifact)

    def figures(self, budgets: "Budgets", excess: Mapping[str, float]) -> str:
        """'latency_p90_ms 0.412 (budget 2), model_size_mb 0.16 (budget 1)'."""
        figures = metrics.values(self.measurement, self.artifact, budgets.basis, tuple(excess))
        limits = budgets.limits()
        return ", ".join(f"{name} {figures[name]:.3g} (budget {limits[name]:g})"
                         for name in excess)


def smallest_precision(choices: tuple[str, ...]) -> str:
    return min(choices, key=lambda p: SMALLEST_FIRST.index(p) if p in SMALLEST_FIRST
               else len(SMALLEST_FIRST))


def uniform(candidate: Candidate, units: tuple[str, ...], precision: str) -> Candidate:
    return candidate.replace(precision={unit: precision for unit in units}) if units \
        else candidate


def check_budgets(study: optuna.Study, ctx: "TrialContext", builder: "CandidateBuilder",
                  log: Callable[[str], None]) -> None:
    """Log one pre-flight line on the budgets (see the module's docstring). A reference that
    cannot be built or measured costs the line, never the search: its trials say why."""
    budgets = ctx.budgets
    if not [name for name in budgets.limits() if name != "fidelity_cosine_min"]:
        return
    try:
        log(_verdict(study, ctx, builder))
    except HwnasError as exc:
        log(f"pre-flight: the budgets were not checked before the search ({exc})")


def _verdict(study: optuna.Study, ctx: "TrialContext", builder: "CandidateBuilder") -> str:
    record = StudyRecord.from_study(study)
    known = _recorded(study, record.base_model_key)
    units = ctx.shape.precision_units
    choices = tuple(ctx.shape.choices_of("precision")) or ("fp32",)
    lowest = smallest_precision(choices)
    base = builder.base_candidate()
    after = (" (fidelity_cosine_min is judged after each fine-tune)"
             if ctx.budgets.fidelity_cosine_min is not None else "")

    def reference(label: str, candidate: Candidate, precision: str,
                  model: "Callable[[], nn.Module]") -> Reference:
        found = next((r for r in known if r.candidate == candidate), None)
        if found is None:
            found = _measure(ctx, builder, label, candidate, precision, model())
            known.append(found)
            study.set_user_attr(ATTRIBUTE, {"key": record.base_model_key,
                                            "references": [r.to_dict() for r in known]})
        return found

    # the largest model: the base at fp32 (measured already) where the space allows fp32,
    # then at the smallest precision, measured only where the first does not fit
    largest: list[Reference] = []
    measured = record.base_model_measurement
    if "fp32" in choices and measured is not None:
        largest.append(Reference("base", "fp32", base, Artifact.from_dict(
            {"sha256": measured.model_sha256, "size_bytes": record.base_model_size_bytes or 0,
             "channels": {}, "parameters": 0}), measured))
    if not largest or (_broken(largest[0], ctx) and lowest != "fp32"):
        largest.append(reference("base", uniform(base, units, lowest), lowest,
                                 lambda: ctx.base_model))
    fits = next((r for r in largest if not _broken(r, ctx)), None)
    if fits is not None:
        budgets = ctx.budgets_for(fits.measurement)
        return (f"pre-flight: the budgets do not bind: the base model, unpruned at "
                f"{fits.precision}, already meets every budget "
                f"({fits.figures(budgets, fits.excess(budgets))}){after}. The search can only "
                f"give up accuracy for margin under the budgets; tighten them to make it choose")
    base_line = "; ".join(f"at {r.precision}: {describe_excess(_excess(r, ctx))}"
                          for r in largest)
    smallest_candidate = uniform(_most_aggressive(builder, ctx), units, lowest)
    smallest = reference("smallest", smallest_candidate, lowest,
                         lambda: builder.prune(smallest_candidate))
    broken = _excess(smallest, ctx)
    budgets = ctx.budgets_for(smallest.measurement)
    if _broken(smallest, ctx):
        wanted = {name: value for name, value in broken.items() if value > 0}
        return (f"pre-flight: the budgets cannot be met: even the smallest candidate (every knob "
                f"at its most aggressive, {lowest} throughout) breaks them: "
                f"{smallest.figures(budgets, wanted)}, {describe_excess(broken)}. Trials are "
                f"unlikely to meet them: relax {', '.join(f'budgets.{n}' for n in wanted)} or "
                f"widen the knobs' ranges. The search goes on (latency is measured with noise "
                f"and a smaller model is not always faster)")
    return (f"pre-flight: the budgets bind: the base model breaks them ({base_line}); the "
            f"smallest candidate ({lowest} throughout) meets them "
            f"({smallest.figures(budgets, broken)}){after}")


def _excess(reference: Reference, ctx: "TrialContext") -> dict[str, float]:
    return reference.excess(ctx.budgets_for(reference.measurement))


def _broken(reference: Reference, ctx: "TrialContext") -> bool:
    return any(value > 0 for value in _excess(reference, ctx).values())


def _most_aggressive(builder: "CandidateBuilder", ctx: "TrialContext") -> Candidate:
    from hwnas.compress.preflight import most_aggressive

    return most_aggressive(builder.pruning, ctx.space)


def _recorded(study: optuna.Study, base_key: str) -> list[Reference]:
    """What an earlier controller of this study measured, for this base model."""
    kept = study.user_attrs.get(ATTRIBUTE) or {}
    if kept.get("key") != base_key:
        return []
    return [Reference.from_dict(data) for data in kept.get("references", ())]


def _measure(ctx: "TrialContext", builder: "CandidateBuilder", label: str,
             candidate: Candidate, precision: str, model: "nn.Module") -> Reference:
    from hwnas.search.candidates import Timings
    from hwnas.search.measuring import DeviceLease, TrialMeasurer

    lease = DeviceLease(ctx.devices)
    work = ctx.run.path / "work" / f"reference-{label}-{precision}"
    try:
        artifact = builder.export(model, candidate, work / "model.onnx")
        measurement = TrialMeasurer(lease, Timings()).measure(artifact)
        return Reference(label, precision, candidate, artifact, measurement)
    finally:
        lease.release()
        shutil.rmtree(work, ignore_errors=True)
