"""`hwnas export`: a trial's exact ONNX bytes and a model card to reproduce and deploy it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import optuna

from hwnas import __version__, metrics
from hwnas.errors import ConfigError
from hwnas.records import StudyRecord, TrialOutcome
from hwnas.redaction import redact
from hwnas.report.placing import put_in_place, staging_folder
from hwnas.run import RunFolder, outcomes


def export_trial(run: RunFolder, trial_number: int, out_dir: Path,
                 whole: threading.Event | None = None) -> dict[str, Path]:
    """Write a trial's ONNX bytes, model card and PyTorch model into ``out_dir``. They are
    written into a temporary folder beside them and moved in together, the card last: an
    export stopped at any moment leaves the complete set or none of it. ``whole`` is set
    the moment the set is in place (before a signal held back meanwhile is acted on)."""
    study = run.open_study()
    found = {o.number: o for o in outcomes(study)}
    outcome = found.get(trial_number)
    if outcome is None:
        raise ConfigError(f"--trial {trial_number}: no such trial in {run.study_name} "
                          f"(trials 0..{max(found, default=-1)})")
    if not outcome.deployable:
        why = f" ({outcome.failure or outcome.rejection})" if outcome.failure or outcome.rejection else ""
        raise ConfigError(f"--trial {trial_number}: {outcome.stage}{why}; only evaluated trials "
                          f"have deployable bytes")
    if study.user_attrs.get("model_family") == "causal_lm":  # a genai folder (hwnas/llm)
        from hwnas.llm.card import export_language_trial

        return export_language_trial(run, study, outcome, out_dir, whole)
    artifact = run.kept_artifact(outcome, study)
    stem = f"{run.study_name}-trial{trial_number}"
    with staging_folder(out_dir, stem) as staging:
        model_path = staging / f"{stem}.onnx"
        model_path.write_bytes(artifact.read_bytes())
        paths = {"model": model_path}
        paths.update(_export_pytorch(run, study, outcome, model_path))
        card = model_card(run, study, outcome)
        if "pytorch_plan" in paths:
            card["pytorch"] = {
                "state_dict": paths["pytorch_weights"].name,
                "channel_plan": paths["pytorch_plan"].name,
                "rebuild": f"hwnas.models.saved.load_pruned('{paths['pytorch_plan'].name}') "
                           f"(or: hwnas rebuild {paths['pytorch_plan'].name} --onnx "
                           f"{model_path.name})",
                "how": "the base model built from the plan, torch-pruning's history replayed, "
                       "then the fine-tuned state_dict loaded (weights_only)"}
        card_path = model_path.with_suffix(".card.json")
        card_path.write_text(json.dumps(card, indent=1, sort_keys=True))
        paths["card"] = card_path
        return put_in_place(paths, out_dir, whole)


def _export_pytorch(run: RunFolder, study: optuna.Study, outcome: TrialOutcome,
                    model_path: Path) -> dict[str, Path]:
    """The fine-tuned PyTorch weights and channel plan beside the ONNX (trials from before
    they were kept have none)."""
    kept = run.kept_pytorch(outcome, study)
    if kept is None:
        return {}
    state, plan = kept
    weights_path = model_path.with_suffix(".pt")
    plan_path = model_path.with_suffix(".plan.json")
    weights_path.write_bytes(state.read_bytes())
    document = json.loads(plan.read_text())
    document["state_dict"] = weights_path.name
    plan_path.write_text(json.dumps(document, indent=1))
    return {"pytorch_weights": weights_path, "pytorch_plan": plan_path}


def model_card(run: RunFolder, study: optuna.Study, outcome: TrialOutcome) -> dict[str, Any]:
    record = StudyRecord.from_study(study)
    assert outcome.artifact is not None and outcome.candidate is not None
    return {
        "hwnas_version": __version__,
        "study": run.study_name,
        "storage": redact(run.storage_url),
        "trial": outcome.number,
        "model_sha256": outcome.artifact.sha256,
        "artifact": outcome.artifact.to_dict(),
        "candidate": outcome.candidate.to_dict(),
        "accuracy": {"validation": outcome.accuracy_val, "test": outcome.accuracy_test,
                     "how": "exported ONNX bytes, onnxruntime CPU, held-out splits"},
        "objectives": dict(zip(record.objectives, outcome.values or ())),
        "metrics": metric_card(outcome, record.energy_basis),
        "constraints": dict(outcome.constraints),
        "budgets": dict(record.budgets, energy_basis=record.energy_basis),
        "measurement": outcome.measurement.to_dict() if outcome.measurement else None,
        # a simulator's figures (Qualcomm's HTP on x86) are not the device's latency
        "latency_is_device_latency": (not outcome.measurement.emulated
                                      if outcome.measurement else None),
        "output_fidelity": dict(
            outcome.output_fidelity.to_dict(),
            how="mean/min cosine similarity and top-1 agreement of the outputs with the same "
                "model's fp32 export, held-out validation samples")
        if outcome.output_fidelity else None,
        "power": power_card(outcome, record.energy_basis),
        "base_model": _base_model(record, outcome),
        "input": {"name": "input", "shape": ["batch", *record.input_shape],
                  "preprocessing": dict(record.preprocessing)},
        "config_version": outcome.config_version,
        "search_space": run.config(outcome.config_version),
        "device_profile": run.device_config(outcome.config_version, outcome.device),
        "device": outcome.device,
        "timings_s": dict(outcome.timings_s),
        "finetune": outcome.finetune.to_dict() if outcome.finetune else None,
        # where PyTorch fine-tuned this model (--torch-device): the trial's own record, else
        # the study's (trials from before it was recorded: None)
        "torch_device": (outcome.finetune.device if outcome.finetune and outcome.finetune.device
                         else record.torch_device),
        # `hwnas finalize`: fine-tuned again to full fidelity from this search trial's candidate
        "finalized_from": outcome.finalized_from,
    }


def metric_card(outcome: TrialOutcome, basis: str) -> dict[str, Any]:
    """Every registered metric the deployed bytes' measurement gives, with its unit and
    direction (a simulator's figure of a device-only metric left out)."""
    if outcome.measurement is None or outcome.artifact is None:
        return {}
    return {metric.name: {"value": value, "unit": metric.unit,
                          "better": "higher" if metric.higher_is_better else "lower"}
            for metric in metrics.all_metrics()
            if not (outcome.measurement.emulated and metric.device_only)
            for value in [metric.value(outcome.measurement, outcome.artifact, basis)]
            if value is not None}


def power_card(outcome: TrialOutcome, basis: str) -> dict[str, Any] | None:
    """How the power figures were obtained: sensor, what it covers, rate, samples, idle."""
    measurement = outcome.measurement
    if measurement is None or measurement.power is None:
        return None
    power = measurement.power
    return {
        "device": measurement.device, "sensor": power.source, "covers": power.covers,
        "scope": power.scope, "figure": power.figure,
        "rate_hz": power.rate_hz, "samples": power.samples,
        "idle_baseline": {"mean_w": power.idle_w, "samples": power.idle_samples},
        "mean_w": power.mean_w, "peak_w": power.peak_w,
        "energy_mj_per_inference": power.energy(basis), "energy_basis": basis,
        "energy_mj_per_inference_total": power.energy_mj_per_inference,
        "energy_mj_per_inference_above_idle": power.energy_mj_per_inference_above_idle,
        "energy_method": power.method,
        "how": "sampled by hwnas-agent on the device during the timed phase of sustained "
               "inference, after an idle baseline with the model loaded",
    }


def _base_model(record: StudyRecord, outcome: TrialOutcome) -> dict[str, Any]:
    """The unpruned parent, measured on the search's device: what the trial is read against."""
    base: dict[str, Any] = {"key": record.base_model_key,
                            "test_accuracy": record.base_model_test_accuracy}
    measured = record.base_model_measurement
    if measured is None:
        return base
    base.update({"device": measured.device, "latency_p50_ms": measured.latency_ms_p50,
                 "latency_p90_ms": measured.latency_ms_p90,
                 "size_mb": (record.base_model_size_bytes or 0) / 1e6,
                 "how": "the unpruned model at fp32, exported and measured once per study by the "
                        "same agent and methodology as the trials", "measurement": measured.to_dict()})
    if outcome.measurement is not None and outcome.measurement.device == measured.device:
        base["trial_latency_p90_ratio"] = outcome.measurement.latency_ms_p90 / measured.latency_ms_p90
    if outcome.artifact is not None and record.base_model_size_bytes:
        base["trial_size_ratio"] = outcome.artifact.size_bytes / record.base_model_size_bytes
    return base
