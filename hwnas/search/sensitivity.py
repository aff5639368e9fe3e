"""Per-unit sensitivity of the exported bytes (issue 24): each unit changed alone — to each
precision the device runs other than fp32, and (the width knob's stages) to a few keep ratios —
exported through the trials' own path (CandidateBuilder: the same pruning, precision plan,
calibration and export style) and read with onnxruntime on held-out validation samples against
the unchanged base model's bytes: output fidelity (cosine mean and min, top-1 agreement) and
accuracy drop. No fine-tuning: it measures raw sensitivity.

Kept in the study (hwnas/sensitivity.py ATTR), keyed by the sha256 of the base model's weights
and every setting that shapes the figures: a resumed search, `hwnas sensitivity` (sensitivity_run.py) or the
report reuse it and nothing is measured twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import optuna
from torch import nn

from hwnas.evaluate import EVAL_BATCH, DeviceSession, _cpu_session, compare_outputs, run_batches
from hwnas.progress import progress_bar
from hwnas.sensitivity import (ATTR, KEEP, PRECISION, SensitivityCell, UnitSensitivity,
                               setting_label)

if TYPE_CHECKING:
    from hwnas.config.search import SensitivitySettings
    from hwnas.export.onnx import ExportedModel
    from hwnas.records import Artifact, Candidate
    from hwnas.search.candidates import CandidateBuilder


@dataclasses.dataclass(frozen=True)
class Change:
    """One unit changed alone: to a precision, or to a keep ratio (a width stage)."""

    unit: str
    kind: str  # PRECISION | KEEP
    value: str  # "int8", or the keep ratio as text ("0.5")

    @property
    def setting(self) -> str:
        return setting_label(self.kind, self.value)


def changes(builder: "CandidateBuilder", settings: "SensitivitySettings") -> list[Change]:
    """Every precision the device runs (but fp32) on every precision unit, then every keep
    ratio on every width stage (where the space searches width)."""
    ctx = builder.ctx
    precisions = [p for p in (ctx.shape.precisions if ctx.space.knobs.precision
                              else ctx.device.precisions) if p != "fp32"]
    found = [Change(unit, PRECISION, p) for unit in ctx.shape.precision_units for p in precisions]
    if ctx.space.knobs.width is not None:
        found += [Change(stage, KEEP, f"{keep:g}") for stage in ctx.shape.stages
                  for keep in settings.keep_ratios]
    return found


def weights_sha256(model: nn.Module) -> str:
    """The base model's weights, name by name: the cache's key to the model itself."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(builder: "CandidateBuilder", settings: "SensitivitySettings",
              wanted: list[Change], weights: str) -> str:
    ctx = builder.ctx
    spec = ctx.device.export
    shaping = {"weights": weights, "changes": [dataclasses.astuple(c) for c in wanted],
               "samples": settings.samples, "seed": ctx.space.search.seed,
               "io_precision": spec.io_precision, "int8_activations": spec.int8_activations,
               "calibration_samples": ctx.space.dataset.calibration_samples,
               "channel_multiple": ctx.device.channel_multiple,
               "precision": ctx.space.knobs.precision.model_dump(mode="json")
               if ctx.space.knobs.precision else None,
               "runtime": ctx.device.runtime.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()


def variant(builder: "CandidateBuilder", change: Change | None
            ) -> tuple[nn.Module, "Candidate"]:
    """The base model with only ``change`` applied (None: the base model itself, fp32)."""
    base = builder.base_candidate()
    if change is None:
        return builder.ctx.base_model, base
    if change.kind == PRECISION:
        plan = {**dict(base.precision_plan), change.unit: change.value}
        return builder.ctx.base_model, base.replace(precision=plan)
    keep = {**dict(base.keep_ratios), change.unit: float(change.value)}
    candidate = base.replace(width=keep)
    return builder.prune(candidate), candidate


def export_variant(builder: "CandidateBuilder", change: Change | None, path: Path
                   ) -> tuple["ExportedModel", "Artifact"]:
    """The variant's bytes, exported exactly as a trial's are."""
    model, candidate = variant(builder, change)
    exported = builder.build(model, candidate, path)
    return exported, builder.artifact(model, exported)


def held_out(builder: "CandidateBuilder", samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``samples`` validation samples (never trained on, never calibrated on)."""
    split = builder.ctx.task.validation
    indices = np.arange(min(samples, len(split)))
    return split.load(indices), np.asarray(split.labels)[indices]


def measure(builder: "CandidateBuilder", settings: "SensitivitySettings", key: str,
            weights: str, wanted: list[Change], work: Path, progress: bool = False,
            log: Callable[[str], None] = print) -> UnitSensitivity:
    """Each change exported and read against the unchanged base model's bytes."""
    x, y = held_out(builder, settings.samples)
    _exported, reference = export_variant(builder, None, work / "base.onnx")
    # outputs are compared with the base's as the controller's CPU computes them (as a trial's
    # fidelity is); accuracy drops with the base as the device's runtime reads it, so that a
    # runtime's own difference (a simulator's fp16) is not charged to every unit
    base_out = run_batches(_cpu_session(reference.read_bytes()), x, EVAL_BATCH)
    try:
        base_read = DeviceSession(reference.path, builder.ctx.device).outputs(x)
    except Exception as exc:  # noqa: BLE001 - a runtime's own error: the CPU reading stands
        log(f"unit sensitivity: the base model does not run on the device's runtime here "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); accuracy "
            f"drops are read against its CPU accuracy")
        base_read = base_out
    base_accuracy = float((base_read.argmax(1) == y).mean())
    cells, runtime = [], None
    bar = progress_bar(len(wanted), "model", "unit sensitivity", enabled=progress)
    try:
        for index, change in enumerate(wanted):
            bar.set_postfix_str(f"{change.unit} {change.setting}", refresh=False)
            try:
                _exported, artifact = export_variant(builder, change, work / f"v{index}.onnx")
                artifact.read_bytes()  # the sha256 check: the bytes read are the bytes built
                opened = DeviceSession(artifact.path, builder.ctx.device)
                out = opened.outputs(x)
            except Exception as exc:  # noqa: BLE001 - ours, or the runtime's (a graph the
                # accelerator will not compile with CPU fallback off): that cell failed
                why = (str(exc).splitlines() or [type(exc).__name__])[0]
                log(f"unit sensitivity: {change.unit} at {change.setting} failed: {why}")
                cells.append(SensitivityCell(change.unit, change.kind, change.value, error=why))
                continue
            finally:
                bar.update(1)
            fidelity = compare_outputs(base_out, out, opened.runtime, opened.emulated)
            runtime = runtime or opened.runtime
            accuracy = float((out.argmax(1) == y).mean())
            cells.append(SensitivityCell(
                change.unit, change.kind, change.value, fidelity.cosine_mean,
                fidelity.cosine_min, fidelity.top1_agreement, accuracy,
                base_accuracy - accuracy, artifact.size_bytes))
            Path(artifact.path).unlink(missing_ok=True)
    finally:
        bar.close()
    return UnitSensitivity(key, weights, base_accuracy, len(y),
                           runtime or "CPUExecutionProvider on the controller", tuple(cells))


def ensure(study: optuna.Study, builder: "CandidateBuilder", settings: "SensitivitySettings",
           log: Callable[[str], None] = print, progress: bool = False,
           wanted: list[Change] | None = None) -> tuple[UnitSensitivity, bool]:
    """The study's sensitivity table for this base model and these settings: read where kept,
    else measured and kept. Returns it and whether it was measured now."""
    wanted = changes(builder, settings) if wanted is None else wanted
    weights = weights_sha256(builder.ctx.base_model)
    key = cache_key(builder, settings, wanted, weights)
    stored = dict(study.user_attrs.get(ATTR) or {})
    if key in stored:
        return UnitSensitivity.from_dict(stored[key]), False
    with tempfile.TemporaryDirectory(prefix="hwnas-sensitivity-") as work:
        found = measure(builder, settings, key, weights, wanted, Path(work), progress, log)
    stored = dict(study.user_attrs.get(ATTR) or {})  # another controller may have written
    stored[key] = found.to_dict()
    study.set_user_attr(ATTR, stored)
    measured = [c for c in found.cells if c.error is None and c.accuracy_drop is not None]
    if measured:
        worst = max(measured, key=lambda c: c.accuracy_drop or 0.0)
        log(f"unit sensitivity: {len(found.cells)} variant(s) on {found.samples} held-out "
            f"samples; most sensitive: {worst.unit} at {worst.setting} (accuracy drop "
            f"{worst.accuracy_drop:.4f}, cosine {worst.cosine_mean:.4f})")
    return found, True
