"""What every controller and worker of one study shares, fixed once in the study itself.

The first `hwnas search` of a study records the search space (YAML), the budgets, the
parent's weights (an artifact of the study, by sha256) and the data split's fingerprint.
Every later controller or `hwnas worker` — on this machine or another — fetches that parent
instead of training its own, refuses to start on different weights or a different split,
and runs the recorded search space with its own devices.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna

from hwnas.config.safe_yaml import read_yaml
from hwnas.errors import ConfigError, excerpt
from hwnas.records import StudyRecord
from hwnas.redaction import redact
from hwnas.run import RunFolder
from hwnas.storage import make_storage

if TYPE_CHECKING:
    from hwnas.data import TaskData
    from hwnas.train import BaseModel

# the parts of a search space that decide the parent and the split
PARENT_SECTIONS = ("base_model", "dataset")
# the parts that name where a machine keeps things: they may differ between machines
LOCAL_KEYS = ("search.storage", "search.run_dir", "search.artifact_store", "search.study_name",
              "search.n_trials")


def existing_study(run: RunFolder) -> tuple[optuna.Study, StudyRecord] | None:
    """The study this run continues or joins, if it exists and was made by hwnas."""
    if run.storage_url.startswith("sqlite:///") and \
            not Path(run.storage_url[len("sqlite:///"):]).exists():
        return None  # nothing to join; and looking must not create the database
    try:
        study = optuna.load_study(study_name=run.study_name, storage=make_storage(run.storage_url))
    except KeyError:
        return None
    return study, StudyRecord.from_study(study)


def parent_filename(sha256: str) -> str:
    return f"parent-{sha256}.pt"


def same_sections(record: StudyRecord, space_yaml: str, sections: tuple[str, ...]) -> bool:
    if record.search_space_yaml is None:
        return False
    recorded = read_yaml(record.search_space_yaml, "the study's recorded search space")
    current = read_yaml(space_yaml, "the search space")
    return all(recorded.get(s) == current.get(s) for s in sections)


def fetch_parent(run: RunFolder, study: optuna.Study, record: StudyRecord) -> Path:
    """The study's parent weights, fetched from its artifact store and verified."""
    from hwnas.artifacts import fetch, find

    sha256 = record.parent_weights_sha256
    assert sha256 is not None
    target = run.cached_path(sha256, ".pt")
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    artifact_id = find(study, parent_filename(sha256))
    if artifact_id is None:
        raise ConfigError(f"study {study.study_name}: its parent weights ({sha256[:12]}) are not "
                          f"in the artifact store {redact(run.store_url)}; every machine of a study must "
                          f"reach one store: set search.artifact_store (file:///shared/path or "
                          f"s3://bucket/prefix), or --artifact-store")
    return fetch(run.store(), artifact_id, target, sha256)


def publish_parent(run: RunFolder, study: optuna.Study, base: "BaseModel",
                   check: Callable[[str], None]) -> str:
    """Put the parent's weights in the artifact store, attached to the study, once ``check``
    accepted their sha256; returns it."""
    import torch

    from hwnas.artifacts import find, upload

    with tempfile.TemporaryDirectory(prefix="hwnas-parent-") as folder:
        path = Path(folder) / "parent.pt"
        torch.save(base.module.state_dict(), path)
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        check(sha256)
        if find(study, parent_filename(sha256)) is None:
            upload(run.store(), study, path, parent_filename(sha256))
    return sha256


def check_same_parent(study: optuna.Study, record: StudyRecord, weights_sha256: str,
                      task: "TaskData") -> None:
    """Refuse to fine-tune from other weights, or on another split, than the study fixed."""
    if record.data_fingerprint is not None and record.data_fingerprint != task.fingerprint:
        raise ConfigError(
            f"study {study.study_name}: this machine's data split differs from the study's "
            f"(fingerprint {task.fingerprint[:12]}, the study's {record.data_fingerprint[:12]}): "
            f"its accuracies would not be comparable. Use the same data files and dataset "
            f"settings (validation_fraction, train_limit, preprocessing) on every machine")
    if record.parent_weights_sha256 is not None and record.parent_weights_sha256 != weights_sha256:
        raise ConfigError(
            f"study {study.study_name}: this machine's parent weights ({weights_sha256[:12]}) are "
            f"not the study's ({record.parent_weights_sha256[:12]}): every trial of a study "
            f"fine-tunes one parent. Leave base_model.weights out to fetch the study's parent, "
            f"or start a new study")


def refuse_other_space(study: optuna.Study, record: StudyRecord, space_yaml: str) -> None:
    """A machine joining a study runs the study's search space, not another one."""
    from hwnas.search.resume import config_changes

    if record.search_space_yaml is None:
        return
    changes = [c for c in config_changes(
        _without_local(record.search_space_yaml, f"study {study.study_name}'s search space"),
        _without_local(space_yaml, "the search space"))]
    if changes:
        shown = "\n".join(f"  {key}: {excerpt(old)} -> {excerpt(new)}" for key, old, new in changes[:30])
        raise ConfigError(f"study {study.study_name} runs another search space than the one "
                          f"given here:\n{shown}\nJoin it with `hwnas worker` (which runs the "
                          f"study's own space), or start a new study (another study_name)")


def _without_local(text: str, source: str) -> Any:
    data = read_yaml(text, source) or {}
    search = dict(data.get("search") or {})
    for key in LOCAL_KEYS:
        search.pop(key.split(".", 1)[1], None)
    return dict(data, search=search)
