"""`hwnas export`: a trial's exact ONNX bytes and a model card to reproduce and deploy it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from hwnas import __version__
from hwnas.errors import ConfigError, ExportError
from hwnas.search import RunInfo


def export_trial(info: RunInfo, trial_number: int, out_dir: Path) -> dict[str, Path]:
    study = info.open_study()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(trial_number)
    if trial is None:
        raise ConfigError(f"--trial {trial_number}: no such trial in {info.study_name} "
                          f"(trials 0..{max(trials, default=-1)})")
    attrs = trial.user_attrs
    if attrs.get("stage") != "evaluated":
        raise ConfigError(f"--trial {trial_number}: {attrs.get('stage') or trial.state.name.lower()}"
                          f"; only evaluated trials have deployable bytes")
    sha256 = attrs["artifact"]["sha256"]
    source = info.run_dir / "artifacts" / f"{sha256}.onnx"
    try:
        data = source.read_bytes()
    except OSError:
        raise ExportError(f"{source} is missing: the artifact was not kept in this run folder") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(f"{source} does not hash to {sha256}: the file was altered")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / f"{info.study_name}-trial{trial_number}.onnx"
    shutil.copyfile(source, model_path)
    card = model_card(info, study, trial)
    card_path = model_path.with_suffix(".card.json")
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True))
    return {"model": model_path, "card": card_path}


def _yaml_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def model_card(info: RunInfo, study: Any, trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "hwnas_version": __version__,
        "study": info.study_name,
        "storage": info.storage,
        "trial": trial.number,
        "model_sha256": attrs["artifact"]["sha256"],
        "artifact": attrs["artifact"],
        "candidate": attrs["candidate"],
        "accuracy": {"validation": attrs.get("accuracy_val"), "test": attrs.get("accuracy_test"),
                     "how": "exported ONNX bytes, onnxruntime CPU, held-out splits"},
        "objectives": dict(zip(study.metric_names or [], trial.values or [])),
        "constraints": trial.constraints,
        "budgets": study.user_attrs.get("budgets"),
        "measurement": attrs.get("measurement"),
        "base_model": study.user_attrs.get("base_model"),
        "input": {"name": "input", "shape": ["batch", *study.user_attrs.get("input_shape", [])],
                  "preprocessing": study.user_attrs.get("preprocessing")},
        "search_space": _yaml_file(info.run_dir / "search_space.yaml"),
        "device_profile": _yaml_file(info.run_dir / "device_profile.yaml"),
        "timings_s": attrs.get("timings_s"),
    }
