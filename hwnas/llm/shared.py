"""What every controller of a language-model study shares (issue 22): the same base model,
the same text, and the kept folders, whichever machine made them.

An image study's parent is trained weights, published in the study's artifact store
(hwnas/search/shared.py). A language study's parent is a Hugging Face folder (or the demo's,
converted into each machine's cache) and text files that every machine reads from its own
disk. The first `hwnas search` of a study records where they were (absolute paths, and the
folder the space's relative paths resolved against) and what they hold (sha256 of each file
that decides the model: config, safetensors, tokenizer; of each text split). A controller or
`hwnas worker` joining the study resolves the recorded space's relative paths against that
same folder, or against ``--files-root DIR`` on a machine where the files live elsewhere, and
is refused, naming the file, where its files differ or are missing.

A trial's kept onnxruntime-genai folder stays in the run folder of the controller that made
it; on a shared study it also goes to the study's artifact store as one tar file (named by
its manifest's sha256), so that the primary's front evaluation and `hwnas export` on any
machine read every trial's folder, verified file by file against that sha256.
"""

from __future__ import annotations

import dataclasses
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping

import optuna

from hwnas.errors import ConfigError, ExportError
from hwnas.llm.export import file_sha256
from hwnas.redaction import redact
from hwnas.run import RunFolder

STUDY_ATTR = "llm_sources"
# the files of a Hugging Face folder that decide the model and its tokens (what loads)
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
FILES_ADVICE = ("every machine of a study needs the same model folder and text files: put "
                "them at the recorded paths, or give `hwnas worker --files-root DIR` (DIR: "
                "where the study's space's relative paths resolve on this machine)")


def model_files(folder: Path) -> dict[str, str]:
    """File name -> sha256 of the model folder's files that decide the model."""
    found = [folder / name for name in MODEL_FILES if (folder / name).is_file()]
    found += sorted(folder.glob("*.safetensors"))
    return {path.name: file_sha256(path) for path in found}


@dataclasses.dataclass(frozen=True)
class LanguageSources:
    """Where a language study's model and text came from, and their content."""

    root: str  # the folder the space's relative paths resolved against (absolute)
    model_folder: str  # absolute, as the study's creator resolved it
    model_files: Mapping[str, str]  # file name -> sha256
    text: tuple[tuple[str, str, str], ...]  # (split, source, sha256), as the budget report

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "model_folder": self.model_folder,
                "model_files": dict(self.model_files), "text": [list(t) for t in self.text]}

    @classmethod
    def of_study(cls, study: optuna.Study) -> "LanguageSources | None":
        found = study.user_attrs.get(STUDY_ATTR)
        if not isinstance(found, dict):
            return None  # a study made before they were recorded
        return cls(found["root"], found["model_folder"], dict(found["model_files"]),
                   tuple(tuple(t) for t in found["text"]))  # type: ignore[misc]

    def write(self, study: optuna.Study) -> None:
        study.set_user_attr(STUDY_ATTR, self.as_dict())


def check_model_folder(study_name: str, recorded: LanguageSources, folder: Path) -> None:
    """Refuse a model folder that is missing here or differs from the study's, by file."""
    if not folder.is_dir():
        raise ConfigError(f"study {study_name}: its base model folder is not on this machine "
                          f"({folder}; the study's creator read {recorded.model_folder}): "
                          f"{FILES_ADVICE}")
    mine = model_files(folder)
    differing = sorted(name for name in set(recorded.model_files) | set(mine)
                       if recorded.model_files.get(name) != mine.get(name))
    if differing:
        shown = ", ".join(f"{name} ({_state(recorded.model_files.get(name), mine.get(name))})"
                          for name in differing)
        raise ConfigError(f"study {study_name}: this machine's base model folder {folder} is "
                          f"not the study's ({recorded.model_folder}): {shown}. Its trials would "
                          f"prune another model; {FILES_ADVICE}")


def _state(recorded: str | None, mine: str | None) -> str:
    if recorded is None:
        return "not in the study's folder"
    if mine is None:
        return "missing here"
    return f"sha256 {mine[:12]} here, {recorded[:12]} in the study"


def check_text(study_name: str, recorded: LanguageSources,
               text: tuple[tuple[str, str, str], ...]) -> None:
    """Refuse text whose splits differ from the study's (sha256 of each)."""
    theirs = {split: (source, sha) for split, source, sha in recorded.text}
    differing = [f"the {split} text {source} (sha256 {sha[:12]} here, "
                 f"{theirs[split][1][:12]} in the study, from {theirs[split][0]})"
                 for split, source, sha in text if split in theirs and theirs[split][1] != sha]
    if differing:
        raise ConfigError(f"study {study_name}: {'; '.join(differing)}: its perplexities "
                          f"would not be comparable; {FILES_ADVICE}")


# --- kept folders in the study's artifact store -----------------------------------------------


def shares_folders(run: RunFolder) -> bool:
    """Whether other controllers may need this run's kept folders: a study on a storage other
    than the run folder's own SQLite file, or an artifact store given."""
    own = f"sqlite:///{(run.path / 'study.db').resolve()}"
    return bool(run.artifact_store_url) or run.storage_url != own


def _tar_name(sha256: str) -> str:
    return f"{sha256}.genai.tar"


def keep_folder(run: RunFolder, trial: Any, folder: Path, sha256: str) -> None:
    """The kept folder, as one tar file, attached to the trial in the study's store."""
    from hwnas.artifacts import upload

    with tempfile.TemporaryDirectory(prefix="hwnas-genai-") as scratch:
        archive = Path(scratch) / _tar_name(sha256)
        with tarfile.open(archive, "w") as tar:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        upload(run.store(), trial, archive, _tar_name(sha256))


def kept_folder(run: RunFolder, study: optuna.Study, number: int) -> Path:
    """A trial's kept folder: this run folder's own, or fetched from the study's artifact
    store into the cache; verified against the manifest sha256 the trial recorded."""
    from hwnas.artifacts import fetch, find
    from hwnas.records import TrialOutcome

    trial = study.get_trials(deepcopy=False)[number]
    outcome = TrialOutcome.from_trial(trial)
    llm = trial.user_attrs.get("llm") or {}
    if outcome.artifact is None or not llm.get("folder"):
        raise ExportError(f"trial {number} kept no folder (it was not evaluated)")
    sha256 = outcome.artifact.sha256
    local = run.path / llm["folder"]
    for folder in (local, run.cached_path(sha256, ".genai")):
        if folder.is_dir() and _holds(folder, sha256):
            return folder
    artifact_id = find(trial, _tar_name(sha256), storage=study._storage)
    if artifact_id is None and local.is_dir():
        raise ExportError(f"{local} changed since the search measured it (recorded manifest "
                          f"{sha256[:12]})")
    if artifact_id is None:
        raise ExportError(f"trial {number}: its folder ({sha256[:12]}) is neither in "
                          f"{run.path / llm['folder']} nor in the artifact store "
                          f"{redact(run.store_url)}: read it on the machine that ran it "
                          f"({outcome.controller or 'unknown'})")
    target = run.cached_path(sha256, ".genai")
    with tempfile.TemporaryDirectory(prefix="hwnas-genai-", dir=run.path) as scratch:
        archive = fetch(run.store(), artifact_id, Path(scratch) / _tar_name(sha256))
        unpacked = Path(scratch) / "folder"
        try:
            with tarfile.open(archive) as tar:
                _check_members(tar.getmembers(), outcome.artifact.size_bytes)
                tar.extractall(unpacked, filter="data")  # nothing outside the folder
        except (tarfile.TarError, OSError, ValueError) as exc:
            raise ExportError(f"trial {number}: its folder in the artifact store cannot be "
                              f"unpacked ({exc}): the store was altered or damaged") from None
        if not _holds(unpacked, sha256):
            raise ExportError(f"trial {number}: the folder in the artifact store is not the "
                              f"one the trial measured (manifest sha256 {sha256[:12]}): the "
                              f"store was altered")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        unpacked.replace(target)
    return target


def _check_members(members: list[tarfile.TarInfo], size_bytes: int) -> None:
    """Regular files and folders only, no more bytes than the folder the trial measured:
    checked before anything is written (a link, a device or a huge member is refused)."""
    odd = [m.name for m in members if not (m.isfile() or m.isdir())]
    if odd:
        raise ValueError(f"not a file or folder: {', '.join(odd[:3])}")
    total = sum(m.size for m in members if m.isfile())
    if total > size_bytes:
        raise ValueError(f"{total} bytes where the trial's folder held {size_bytes}")


def _holds(folder: Path, sha256: str) -> bool:
    """Whether the folder is the one whose manifest the trial recorded (a folder that cannot
    be read as a model folder is not)."""
    try:
        return _manifest_sha256(folder) == sha256
    except Exception:  # noqa: BLE001 - a manifest or genai_config error: not that folder
        return False


def _manifest_sha256(folder: Path) -> str:
    from hwnas_agent.manifest import from_folder

    from hwnas.profile_generation import decoder_file

    return from_folder(str(folder), decoder_file(folder)).sha256
