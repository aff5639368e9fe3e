"""`hwnas export` of a language model's trial: its onnxruntime-genai folder, exactly the bytes
the search measured and evaluated (checked against the recorded manifest sha256), and a model
card with every figure and where it came from. ``onnxruntime_genai.Model(FOLDER)`` loads the
folder as it is."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import optuna

from hwnas import __version__
from hwnas.errors import ConfigError, ExportError
from hwnas.records import TrialOutcome
from hwnas.report.placing import put_in_place, staging_folder
from hwnas.run import RunFolder


def export_language_trial(run: RunFolder, study: optuna.Study, outcome: TrialOutcome,
                          out_dir: Path, whole: threading.Event | None = None) -> dict[str, Path]:
    from hwnas_agent.manifest import from_folder

    from hwnas.llm.shared import kept_folder
    from hwnas.profile_generation import decoder_file

    trial = study.trials[outcome.number]
    llm = trial.user_attrs.get("llm") or {}
    if not llm.get("folder"):
        raise ConfigError(f"--trial {outcome.number}: it kept no folder (not evaluated)")
    try:  # this run folder's, or (a worker's) fetched from the study's artifact store
        folder = kept_folder(run, study, outcome.number)
    except ExportError as error:
        raise ConfigError(f"--trial {outcome.number}: {error}; run the search again to "
                          f"rebuild it") from None
    assert outcome.artifact is not None
    manifest = from_folder(str(folder), decoder_file(folder))
    if manifest.sha256 != outcome.artifact.sha256:
        raise ExportError(f"{folder} changed since the search measured it (manifest "
                          f"{manifest.sha256[:12]}, recorded {outcome.artifact.sha256[:12]})")
    stem = f"{run.study_name}-trial{outcome.number}"
    with staging_folder(out_dir, stem) as staging:
        shutil.copytree(folder, staging / stem)
        card_path = staging / f"{stem}.card.json"
        card_path.write_text(json.dumps(language_card(study, trial, outcome, manifest.sha256),
                                        indent=1, sort_keys=True, default=str))
        return put_in_place({"model": staging / stem, "card": card_path}, out_dir, whole)


def language_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, outcome: TrialOutcome,
                  sha256: str) -> dict[str, Any]:
    llm = trial.user_attrs.get("llm") or {}
    tested = (study.user_attrs.get("llm_test") or {}).get(str(trial.number))
    measurement = outcome.measurement.to_dict() if outcome.measurement else None
    return {
        "hwnas_version": __version__, "study": study.study_name, "trial": trial.number,
        "model_family": "causal_lm", "folder_manifest_sha256": sha256,
        "how_to_run": "import onnxruntime_genai as og; model = og.Model(FOLDER); "
                      "tokenizer = og.Tokenizer(model) "
                      "(docs/language-models.md: generating from an export)",
        "candidate": outcome.candidate.to_dict() if outcome.candidate else None,
        "slice_plan": llm.get("slice_plan"), "precision_plan": llm.get("precision_plan"),
        "parameters": llm.get("parameters"), "healing": llm.get("heal"),
        # where saliency and healing ran in PyTorch (--torch-device); healing names its own
        "torch_device": study.user_attrs.get("torch_device"),
        "quality": {"next_token_accuracy_val": outcome.accuracy_val,
                    "perplexity_val": llm.get("perplexity_val"),
                    "tokens_val": llm.get("tokens_val"),
                    "mcq_accuracy_val": llm.get("mcq_accuracy_val"),
                    "test": tested,
                    "what": "figures of this exported folder (onnxruntime on the controller); "
                            "the search selected on val; test is the held-out text"},
        "text": study.user_attrs.get("llm_data"),
        "budgets": study.user_attrs.get("budgets"),
        "objectives": study.user_attrs.get("objectives"),
        "measurement": measurement, "device": outcome.device,
        "model_size_bytes": outcome.artifact.size_bytes if outcome.artifact else None,
        "exporter": llm.get("exporter"),
    }
