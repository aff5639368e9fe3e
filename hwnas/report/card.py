"""`hwnas export`: a trial's exact ONNX bytes and a model card to reproduce and deploy it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from hwnas import __version__
from hwnas.errors import ConfigError
from hwnas.records import StudyRecord, TrialOutcome
from hwnas.run import RunFolder, outcomes


def export_trial(run: RunFolder, trial_number: int, out_dir: Path) -> dict[str, Path]:
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
    artifact = run.kept_artifact(outcome)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / f"{run.study_name}-trial{trial_number}.onnx"
    model_path.write_bytes(artifact.read_bytes())
    card = model_card(run, study, outcome)
    card_path = model_path.with_suffix(".card.json")
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True))
    return {"model": model_path, "card": card_path}


def model_card(run: RunFolder, study: optuna.Study, outcome: TrialOutcome) -> dict[str, Any]:
    record = StudyRecord.from_study(study)
    assert outcome.artifact is not None and outcome.candidate is not None
    return {
        "hwnas_version": __version__,
        "study": run.study_name,
        "storage": run.storage_url,
        "trial": outcome.number,
        "model_sha256": outcome.artifact.sha256,
        "artifact": outcome.artifact.to_dict(),
        "candidate": outcome.candidate.to_dict(),
        "accuracy": {"validation": outcome.accuracy_val, "test": outcome.accuracy_test,
                     "how": "exported ONNX bytes, onnxruntime CPU, held-out splits"},
        "objectives": dict(zip(record.objectives, outcome.values or ())),
        "constraints": dict(outcome.constraints),
        "budgets": dict(record.budgets),
        "measurement": outcome.measurement.to_dict() if outcome.measurement else None,
        "base_model": {"key": record.base_model_key,
                       "test_accuracy": record.base_model_test_accuracy},
        "input": {"name": "input", "shape": ["batch", *record.input_shape],
                  "preprocessing": dict(record.preprocessing)},
        "config_version": outcome.config_version,
        "search_space": run.config(outcome.config_version),
        "device_profile": run.device_config(outcome.config_version, outcome.device),
        "device": outcome.device,
        "timings_s": dict(outcome.timings_s),
    }
