"""The run folder: where one search lives, and what `search`, `report` and `export` share.

    runs/<space>--<device>/
      run.json                 storage URL, study name, hwnas version, config versions
      configs/<version>/       every version of the search space and device profiles used,
                               by content hash: a trial's card shows the config it ran under
      study.db                 the Optuna study (SQLite default; any storage URL in run.json)
      artifacts/<sha256>.onnx  the exact bytes of evaluated trials (what `export` hands out)
      work/trial-N/            a trial's scratch files, removed when it ends
      report/                  report.md, report.html, pareto.png
      run.log                  library log lines (onnxruntime, torch, optuna), kept out of the
                               terminal

Feasibility and the Pareto front are decided here too, once, from TrialOutcome records.
Nothing here imports torch, paramiko or the search package: reading a run is cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import optuna
import yaml

from hwnas import __version__
from hwnas.errors import ConfigError, ExportError
from hwnas.records import Artifact, TrialOutcome

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile, SearchSpace

RUN_FILE = "run.json"
HEARTBEAT_S = 10
GRACE_S = 30
SPACE_FILE = "search_space.yaml"


def device_file(index: int) -> str:
    return "device_profile.yaml" if index == 0 else f"device_profile.{index + 1}.yaml"


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    """Optuna storage for a URL; RDB storages get heartbeats so that a resumed search finds
    the trials a killed controller left RUNNING (failed, then retried)."""
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        return url
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():  # heartbeats are documented but marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: Path
    storage_url: str
    study_name: str

    # -- finding one -------------------------------------------------------------------------
    @classmethod
    def locate(cls, space: "SearchSpace", device: "DeviceProfile",
               run_dir: Path | None = None) -> "RunFolder":
        """Where a search of ``space`` on ``device`` lives (flags and config decide, in that order)."""
        path = Path(run_dir or space.search.run_dir or Path("runs") / f"{space.name}--{device.name}")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--run-dir {path}: exists and is not a folder")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"--run-dir {path}: {parent} is a file, not a folder")
        storage = space.search.storage or f"sqlite:///{path.resolve() / 'study.db'}"
        return cls(path, storage, space.search.study_name or f"{space.name}--{device.name}")

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunFolder":
        path = Path(run_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text())
            return cls(Path(run_dir), data["storage"], data["study_name"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a search run folder ({exc}); pass the folder that "
                              f"`hwnas search` printed") from None

    # -- layout ------------------------------------------------------------------------------
    @property
    def artifacts_dir(self) -> Path:
        return self.path / "artifacts"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def log_path(self) -> Path:
        return self.path / "run.log"

    def work_dir(self, trial_number: int) -> Path:
        return self.path / "work" / f"trial-{trial_number}"

    def artifact_path(self, sha256: str) -> Path:
        return self.artifacts_dir / f"{sha256}.onnx"

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
            digest.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
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
                shutil.copyfile(source, tmp / name)
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
        info.update({"storage": self.storage_url, "study_name": self.study_name,
                     "hwnas_version": __version__, "config_versions": versions,
                     "current_config": version, "studies": studies})
        _write_json_atomic(self.path / RUN_FILE, info)
        return version

    def config(self, version: str | None, name: str = SPACE_FILE) -> Any:
        """A kept config file as data (None if that version or file is not kept)."""
        version = version or self._info().get("current_config")
        if version is None:
            return None
        try:
            return yaml.safe_load((self.path / "configs" / version / name).read_text())
        except (OSError, yaml.YAMLError):
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
                              f"{self.storage_url}") from None

    # -- artifacts ---------------------------------------------------------------------------
    def keep_artifact(self, artifact: Artifact) -> Artifact:
        """Store the bytes content-addressed in the run folder: what export hands out later."""
        target = self.artifact_path(artifact.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            # unique per writer: trials on several devices run in threads
            tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
            shutil.copyfile(artifact.path, tmp)
            tmp.replace(target)
        return dataclasses.replace(artifact, path=str(target))

    def kept_artifact(self, outcome: TrialOutcome) -> Artifact:
        """The kept bytes of a trial, verified against the sha256 the study recorded."""
        if outcome.artifact is None:
            raise ExportError(f"trial {outcome.number} has no artifact")
        artifact = dataclasses.replace(outcome.artifact,
                                       path=str(self.artifact_path(outcome.artifact.sha256)))
        try:
            artifact.read_bytes()
        except OSError:
            raise ExportError(f"{artifact.path} is missing: the artifact was not kept in this "
                              f"run folder") from None
        return artifact


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


# -- feasibility and the front: decided once, here -------------------------------------------

def outcomes(study: optuna.Study) -> list[TrialOutcome]:
    return [TrialOutcome.from_trial(t) for t in study.get_trials(deepcopy=False)]


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[int]) -> bool:
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x > s * y for x, y, s in zip(a, b, signs))


def pareto_front(found: Iterable[TrialOutcome], directions: Sequence[str]) -> list[TrialOutcome]:
    """Feasible trials no other feasible trial dominates (accuracy first, maximised)."""
    signs = [1 if d in ("maximize", "MAXIMIZE") else -1 for d in directions]
    feasible = [o for o in found if o.feasible]
    return [o for o in feasible
            if not any(_dominates(other.values, o.values, signs) for other in feasible  # type: ignore[arg-type]
                       if other is not o)]


def study_directions(study: optuna.Study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def best_feasible(found: Iterable[TrialOutcome]) -> TrialOutcome | None:
    """The most accurate trial meeting every budget (accuracy is the first objective)."""
    return max((o for o in found if o.feasible), key=lambda o: o.values[0],  # type: ignore[index]
               default=None)
