"""Study wiring: sampler, storage, constraints, resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hwnas import __version__
from hwnas.config import effective_budgets, load_device_profile, load_search_space
from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError, DeviceError, ExportError, MeasurementError
from hwnas.export.onnx import plan_units, precision_units
from hwnas.models import model_stages
from hwnas.remote.device import open_device
from hwnas.space import check_enqueued, space_shape

if TYPE_CHECKING:
    from hwnas.config.models import Budgets
    from hwnas.data import TaskData
    from hwnas.remote.pool import DevicePool
    from hwnas.search.objective import TrialContext
    from hwnas.space import SpaceShape
    from hwnas.train import BaseModel

RUN_FILE = "run.json"
# heartbeats, stale-trial recovery and metric names are "experimental" in Optuna 5 but are
# exactly the documented mechanisms for this; keep the user's terminal readable
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)
HEARTBEAT_S = 10
GRACE_S = 30


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Where a search lives: enough for `report` and `export` to find it again."""

    run_dir: Path
    storage: str
    study_name: str

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunInfo":
        path = Path(run_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a search run folder ({exc}); pass the folder that "
                              f"`hwnas search` printed") from None
        return cls(Path(run_dir), data["storage"], data["study_name"])

    def open_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=make_storage(self.storage))


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        # heartbeats let a resumed search find trials a killed controller left RUNNING
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    return url


def run_location(space: SearchSpace, device: DeviceProfile, run_dir: Path | None) -> RunInfo:
    run_dir = Path(run_dir or space.search.run_dir or Path("runs") / f"{space.name}--{device.name}")
    storage = space.search.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"
    study_name = space.search.study_name or f"{space.name}--{device.name}"
    return RunInfo(run_dir, storage, study_name)


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if space.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    startup = min(10, max(3, space.search.n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def _snapshot_config(info: RunInfo, space_path: Path, device_paths: list[Path]) -> None:
    """Copies of the configs beside the study: a run folder explains itself."""
    info.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space_path, info.run_dir / "search_space.yaml")
    shutil.copyfile(device_paths[0], info.run_dir / "device_profile.yaml")
    for index, path in enumerate(device_paths[1:], start=2):
        shutil.copyfile(path, info.run_dir / f"device_profile.{index}.yaml")
    (info.run_dir / RUN_FILE).write_text(json.dumps(
        {"storage": info.storage, "study_name": info.study_name, "hwnas_version": __version__,
         "search_space": str(space_path), "device_profiles": [str(p) for p in device_paths]},
        indent=1))


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    info: RunInfo
    study: optuna.Study
    trials_run: int


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a trial needs that does not change between trials."""

    space: SearchSpace
    device: DeviceProfile  # the first device: its budgets and channel multiple apply
    budgets: "Budgets"
    task: "TaskData"
    base: "BaseModel"
    shape: "SpaceShape"
    devices: tuple[DeviceProfile, ...] = ()


def _device_paths(device_path: str | Path | list[str | Path] | tuple) -> list[Path]:
    return [Path(p) for p in device_path] if isinstance(device_path, (list, tuple)) \
        else [Path(device_path)]


def prepare(space_path: str | Path, device_path: str | Path | list, n_trials: int | None = None,
            log: Callable[[str], None] = print) -> Prepared:
    """Load and cross-check the configs, the data and the base model (trained once, cached)."""
    from hwnas.data import load_task
    from hwnas.train import load_base_model

    space = load_search_space(space_path)
    devices = tuple(load_device_profile(p) for p in _device_paths(device_path))
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"--device: each device profile must have its own name; got {names}")
    device = devices[0]
    if n_trials is not None:
        space = space.model_copy(update={"search": space.search.model_copy(
            update={"n_trials": n_trials})})
    task = load_task(space.dataset)
    base = load_base_model(space.base_model, task, log=log)
    stages = model_stages(base.module, space.base_model)
    granularity = space.knobs.precision.granularity if space.knobs.precision else "stage"
    units = plan_units(precision_units(base.module, stages, granularity))
    for other in devices[1:]:  # every device must run every precision the search may pick
        space_shape(space, other, list(stages), units)
    shape = space_shape(space, device, list(stages), units)
    check_enqueued(space, shape)
    return Prepared(space, device, effective_budgets(space, device), task, base, shape, devices)


def trial_context(prepared: Prepared, pool: "DevicePool", run_dir: Path) -> "TrialContext":
    from hwnas.search.objective import TrialContext

    return TrialContext(prepared.space, prepared.device, prepared.budgets, prepared.task,
                        prepared.base.module, prepared.shape, pool, run_dir)


@contextlib.contextmanager
def open_pool(profiles: tuple[DeviceProfile, ...]) -> Iterator["DevicePool"]:
    """Every device connected and version-checked, or a clear error naming the one that is not."""
    from hwnas.remote.pool import Device, DevicePool

    with contextlib.ExitStack() as stack:
        devices = [Device(profile, stack.enter_context(open_device(profile)))
                   for profile in profiles]
        yield DevicePool(devices)


def run_search(space_path: str | Path, device_path: str | Path | list, run_dir: Path | None = None,
               n_trials: int | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> SearchOutcome:
    from hwnas.search.objective import Objective, seed_everything
    from hwnas.search.progress import ProgressCallback

    prepared = prepare(space_path, device_path, n_trials, log)
    space, device, task, base = prepared.space, prepared.device, prepared.task, prepared.base
    info = run_location(space, device, run_dir)
    _snapshot_config(info, Path(space_path), _device_paths(device_path))
    seed_everything(space.search.seed)

    storage = make_storage(info.storage)
    directions = ["maximize"] + ["minimize"] * (len(space.objectives) - 1)
    probe = optuna.create_study(storage=storage, study_name=info.study_name,
                                directions=directions, load_if_exists=True)
    optuna.storages.fail_stale_trials(probe)
    trials = probe.get_trials(deepcopy=False)
    completed = sum(t.state == TrialState.COMPLETE for t in trials)
    # a fresh seed per resumption: the same seed would replay the same random start-up trials
    study = optuna.load_study(study_name=info.study_name, storage=storage,
                              sampler=make_sampler(space, space.search.seed + len(trials)))
    if not trials:
        for params in space.search.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    study.set_metric_names(list(space.objectives))
    study.set_user_attr("budgets", prepared.budgets.model_dump())
    study.set_user_attr("base_model", {"key": base.key, "test_accuracy": base.test_accuracy})
    study.set_user_attr("preprocessing", task.preprocessing)
    study.set_user_attr("input_shape", list(task.input_shape))
    remaining = max(0, space.search.n_trials - completed)
    log(f"study {info.study_name}: {completed} trials done, {remaining} to go "
        f"(storage {info.storage})")
    if remaining == 0:
        return SearchOutcome(info, study, 0)

    with open_pool(prepared.devices) as pool:
        callbacks = [ProgressCallback(remaining, enabled=progress)]
        try:
            # one trial per device at a time; a lost device fails its trial, not the study
            study.optimize(Objective(trial_context(prepared, pool, info.run_dir)),
                           n_trials=remaining, n_jobs=len(pool), callbacks=callbacks,
                           catch=(MeasurementError, ExportError, DeviceError), gc_after_trial=True)
        finally:
            callbacks[0].close()
        if not pool.alive:
            done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
            raise DeviceError(f"every device was lost; the study keeps its {done} completed "
                              f"trials: run the same command again to continue")
    return SearchOutcome(info, study, remaining)
