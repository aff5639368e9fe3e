"""The run folder: where one search lives, and what `search`, `report` and `export` share.

    runs/<space>--<device>/
      run.json                 storage URL (its password hidden: redaction.py), study name,
                               hwnas version, config versions
      configs/<version>/       every version of the search space and device profiles used,
                               by content hash: a trial's card shows the config it ran under
      study.db                 the Optuna study (SQLite default; any storage URL in run.json)
      artifacts/               the default artifact store (see artifacts.py): the exact ONNX
                               bytes of evaluated trials, their fine-tuned PyTorch weights
                               and channel plans, their model cards, the parent's weights; a
                               shared store (file:// on a shared path, s3://) when several
                               machines work on one study
      cache/                   artifacts fetched from the store, by sha256
      work/trial-N/            a trial's scratch files, removed when it ends
      report/                  report.md, report.html, pareto.png
      run.log                  library log lines (onnxruntime, torch, optuna), kept out of the
                               terminal

The study's storage (retries, heartbeats) is hwnas/storage.py; feasibility and the Pareto
front, hwnas/pareto.py. Nothing here imports torch, paramiko or the search package: reading a
run is cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import optuna

from hwnas import __version__
from hwnas.errors import ConfigError, ExportError
from hwnas.records import Artifact, TrialOutcome
from hwnas.redaction import redact, with_credentials
from hwnas.storage import make_storage

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile, SearchSpace

RUN_FILE = "run.json"
SPACE_FILE = "search_space.yaml"


def device_file(index: int) -> str:
    return "device_profile.yaml" if index == 0 else f"device_profile.{index + 1}.yaml"


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: Path
    storage_url: str
    study_name: str
    artifact_store_url: str = ""  # empty: the run folder's own artifacts/

    # -- finding one -------------------------------------------------------------------------
    @classmethod
    def locate(cls, space: "SearchSpace", device: "DeviceProfile",
               run_dir: Path | None = None) -> "RunFolder":
        """Where a search of ``space`` on ``device`` lives (flags and config decide, in that
        order; else a run folder goes on with the database other than its SQLite and the
        artifact store its run.json names)."""
        path = Path(run_dir or space.search.run_dir or Path("runs") / f"{space.name}--{device.name}")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--run-dir {path}: exists and is not a folder")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"--run-dir {path}: {parent} is a file, not a folder")
        info = cls(path, "", "")._info()
        recorded = info.get("storage")
        storage = space.search.storage or (
            with_credentials(recorded, str(path / RUN_FILE))
            if isinstance(recorded, str) and not recorded.startswith("sqlite")
            else f"sqlite:///{path.resolve() / 'study.db'}")
        return cls(path, storage, space.search.study_name or f"{space.name}--{device.name}",
                   space.search.artifact_store or str(info.get("artifact_store") or ""))

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunFolder":
        path = Path(run_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text())
            storage = _own_database(Path(run_dir), with_credentials(data["storage"], str(path)))
            return cls(Path(run_dir), storage, data["study_name"], data.get("artifact_store", ""))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a search run folder ({exc}); pass the folder that "
                              f"`hwnas search` printed") from None

    # -- layout ------------------------------------------------------------------------------
    @property
    def artifacts_dir(self) -> Path:
        return self.path / "artifacts"

    @property
    def store_url(self) -> str:
        return self.artifact_store_url or f"file://{self.artifacts_dir.resolve()}"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def log_path(self) -> Path:
        return self.path / "run.log"

    def work_dir(self, trial_number: int) -> Path:
        return self.path / "work" / f"trial-{trial_number}"

    def cached_path(self, sha256: str, suffix: str = ".onnx") -> Path:
        return self.path / "cache" / f"{sha256}{suffix}"

    # -- configs: every version kept ---------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _config_files(space_path: Path, device_paths: Sequence[Path]) -> list[tuple[str, Path]]:
        return [(SPACE_FILE, Path(space_path))] + [
            (device_file(i), Path(p)) for i, p in enumerate(device_paths)]

    @classmethod
    def config_version(cls, space_path: Path, device_paths: Sequence[Path]) -> str:
        """The content hash of a set of config files: a run's config version."""
        digest = hashlib.sha256()
        for name, source in cls._config_files(space_path, device_paths):
            digest.update(name.encode() + b"\0" + _kept_text(source) + b"\0")
        return digest.hexdigest()[:12]

    def current_config(self) -> str | None:
        """The version the study last ran under (None for a new run folder)."""
        return self._info().get("current_config")

    def record_configs(self, space_path: Path, device_paths: Sequence[Path]) -> str:
        """Keep this run's configs under their content hash and note the version in run.json;
        returns the version. Earlier versions stay: their trials' cards still point at them."""
        files = self._config_files(space_path, device_paths)
        version = self.config_version(space_path, device_paths)
        folder = self.path / "configs" / version
        if not folder.is_dir():
            tmp = folder.with_name(f".{version}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, source in files:
                (tmp / name).write_bytes(_kept_text(source))
            tmp.replace(folder)
        info = self._info()
        versions = info.get("config_versions", [])
        if not any(v["version"] == version for v in versions):
            versions.append({"version": version, "first_used_unix_time": time.time(),
                             "search_space": str(space_path),
                             "device_profiles": [str(p) for p in device_paths]})
        studies = info.get("studies", [])
        if self.study_name not in studies:
            studies.append(self.study_name)
        info.update({"storage": redact(self.storage_url), "study_name": self.study_name,
                     "hwnas_version": __version__, "config_versions": versions,
                     "current_config": version, "studies": studies,
                     "artifact_store": redact(self.artifact_store_url)})
        _write_json_atomic(self.path / RUN_FILE, info)
        return version

    def config(self, version: str | None, name: str = SPACE_FILE) -> Any:
        """A kept config file as data (None if that version or file is not kept)."""
        version = version or self._info().get("current_config")
        if version is None:
            return None
        from hwnas.config.safe_yaml import read_yaml

        path = self.path / "configs" / version / name
        try:
            # redacted again: a copy an older hwnas kept whole shows no password either
            return read_yaml(redact(path.read_text()), str(path))
        except (OSError, ValueError, ConfigError):
            return None

    def device_config(self, version: str | None, device_name: str | None) -> Any:
        """The kept profile of the device named (the first profile if none matches)."""
        profiles = []
        for index in range(64):
            profile = self.config(version, device_file(index))
            if profile is None:
                break
            profiles.append(profile)
        named = [p for p in profiles if isinstance(p, dict) and p.get("name") == device_name]
        return (named or profiles or [None])[0]

    # -- the study ---------------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        try:
            return optuna.load_study(study_name=self.study_name, storage=make_storage(self.storage_url))
        except KeyError:
            raise ConfigError(f"{self.path}: the study {self.study_name!r} is not in "
                              f"{redact(self.storage_url)}") from None

    # -- artifacts ---------------------------------------------------------------------------
    def store(self) -> Any:
        from hwnas.artifacts import open_store

        return open_store(self.store_url)

    def keep_artifact(self, artifact: Artifact, trial: Any) -> str:
        """Put the exact bytes in the artifact store, attached to the trial; returns the id."""
        from hwnas.artifacts import upload

        return upload(self.store(), trial, Path(artifact.path), f"{artifact.sha256}.onnx")

    def keep_pytorch(self, sha256: str, state: Path, plan: Path, trial: Any) -> None:
        """The fine-tuned PyTorch model behind the bytes with this sha256 (state_dict and the
        channel plan that rebuilds it: hwnas.models.saved), attached to the trial."""
        from hwnas.artifacts import upload

        upload(self.store(), trial, state, f"{sha256}.pt")
        upload(self.store(), trial, plan, f"{sha256}.plan.json")

    def kept_pytorch(self, outcome: TrialOutcome, study: optuna.Study) -> tuple[Path, Path] | None:
        """(state_dict, channel plan) of a trial, fetched from the store; None for trials
        from before they were kept. The plan holds the state_dict's sha256 (checked on load)."""
        from hwnas.artifacts import fetch, find

        if outcome.artifact is None or outcome.number is None:
            return None
        sha256 = outcome.artifact.sha256
        trial = study.get_trials(deepcopy=False)[outcome.number]
        found = []
        for suffix in (".pt", ".plan.json"):
            target = self.cached_path(sha256, suffix)
            if not target.exists():
                artifact_id = find(trial, f"{sha256}{suffix}", storage=study._storage)
                if artifact_id is None:
                    return None
                fetch(self.store(), artifact_id, target)
            found.append(target)
        return found[0], found[1]

    def kept_artifact(self, outcome: TrialOutcome, study: optuna.Study) -> Artifact:
        """The kept bytes of a trial, fetched from the store and verified against the sha256
        the study recorded."""
        from hwnas.artifacts import fetch, find

        if outcome.artifact is None or outcome.number is None:
            raise ExportError(f"trial {outcome.number} has no artifact")
        sha256 = outcome.artifact.sha256
        target = self.cached_path(sha256)
        if not target.exists():
            trial = study.get_trials(deepcopy=False)[outcome.number]
            artifact_id = find(trial, f"{sha256}.onnx", storage=study._storage)
            if artifact_id is None:
                raise ExportError(f"trial {outcome.number}: its bytes ({sha256[:12]}) were not "
                                  f"kept in the artifact store {redact(self.store_url)}")
            fetch(self.store(), artifact_id, target, sha256)
        artifact = dataclasses.replace(outcome.artifact, path=str(target))
        artifact.read_bytes()  # verified again: the cache is a plain folder
        return artifact


def _own_database(run_dir: Path, storage: str) -> str:
    """A copied run folder (to another path or machine) reads and writes its own study.db, not
    the one its run.json names by absolute path (the original's, or a path that is not there);
    a study on any other database (a shared SQLite file, PostgreSQL) stays where it is."""
    prefix = "sqlite:///"
    own = run_dir / "study.db"
    if storage.startswith(prefix) and Path(storage[len(prefix):]).name == own.name \
            and own.is_file() and Path(storage[len(prefix):]).resolve() != own.resolve():
        return f"{prefix}{own.resolve()}"
    return storage


def _kept_text(source: Path) -> bytes:
    """A config file as the run folder keeps it: with any URL's credentials hidden (its
    version is the hash of this, so the hash says nothing of a password either)."""
    data = source.read_bytes()
    try:
        return redact(data.decode()).encode()
    except UnicodeDecodeError:
        return data


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


# -- reading a study's trials -----------------------------------------------------------------

def outcomes(study: optuna.Study) -> list[TrialOutcome]:
    """Every trial's record; refused where the study searched a knob this process does not
    have (a plug-in package not installed here), whose part of every record would otherwise
    be left out unread: a report or a model card would then describe another model."""
    check_knobs_installed(study)
    return [TrialOutcome.from_trial(t) for t in study.get_trials(deepcopy=False)]


def check_knobs_installed(study: optuna.Study) -> None:
    """The knobs the study's search space turned on (its recorded YAML) are all registered."""
    import yaml

    from hwnas.knobs import registered

    text = (study.user_attrs.get("search_space") or {}).get("yaml")
    try:
        knobs = (yaml.safe_load(text) or {}).get("knobs") if text else None
    except yaml.YAMLError:
        return  # the loader says what is wrong with it where it is read as a space
    if not isinstance(knobs, dict):
        return
    missing = sorted(set(name for name, value in knobs.items() if value is not None)
                     - {k.name for k in registered()})
    if missing:
        raise ConfigError(f"study {study.study_name}: its search space uses the knob(s) "
                          f"{', '.join(missing)}, which no installed package provides here "
                          f"(entry point group hwnas.knobs): install the package that does, "
                          f"then run again (without it every trial's record would be read "
                          f"without that knob's part)")


def is_search_trial(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial the search ran (not one `hwnas finalize` added after it)."""
    return TrialOutcome.from_attributes(trial.user_attrs).finalized_from is None


def completed_search_trials(study: optuna.Study) -> int:
    """Completed trials of the search itself: what ``n_trials`` counts (finalized trials,
    added by `hwnas finalize`, are not search trials)."""
    return sum(is_search_trial(t) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
