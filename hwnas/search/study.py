"""Study wiring: configs, sampler, storage, resume, and the devices a search measures on."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable

import optuna

from hwnas.budgets import NPU_SPACE, check_power_is_measured, effective_budgets, latency_uses
from hwnas.config import load_device_profile, load_search_space
from hwnas.config.load import naming_the_file
from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError
from hwnas.logs import run_log
from hwnas.records import StudyRecord
from hwnas.redaction import has_hidden_credentials, redact
from hwnas.run import RunFolder
from hwnas.run_lock import RunFolderBusy, writer_lock
from hwnas.search.opening import SEARCH_ADVICE, WORKER_ADVICE, open_study, with_trials
from hwnas.search.optimize import optimize
from hwnas.search.prepared import Prepared, SearchOutcome
from hwnas.space import check_enqueued, space_shape




def device_paths(device_path: str | Path | list[str | Path] | tuple) -> list[Path]:
    return [Path(p) for p in device_path] if isinstance(device_path, (list, tuple)) \
        else [Path(device_path)]


def prepare(space_path: str | Path, device_path: str | Path | list, n_trials: int | None = None,
            log: Callable[[str], None] = print,
            parent: tuple[Path, StudyRecord] | None = None,
            space: SearchSpace | None = None, progress: bool = False,
            torch_device: str | None = None) -> Prepared:
    """Load and cross-check the configs, the data and the base model: the study's own parent
    where it has one (``parent``: its fetched weights and the study record), else trained
    once and cached (``progress``: a bar while it trains), or the user's weights.
    ``torch_device``: --torch-device (auto, default)."""
    from hwnas.torch_device import resolve
    from hwnas.compress.preflight import preflight
    from hwnas.compress.prune import pruning_setup
    from hwnas.data import load_task
    from hwnas.train import load_base_model, load_parent

    space = space or load_search_space(space_path)
    accelerator = resolve(torch_device)  # refused before the data and the model are loaded
    paths = device_paths(device_path)
    devices = cross_check(space, space_path, paths)
    device = devices[0]
    space = with_trials(space, n_trials)
    with naming_the_file(space_path):
        task = load_task(space.dataset)
        if parent is not None:
            weights, record = parent
            base = load_parent(space.base_model, task, weights, record.base_model_test_accuracy,
                               record.base_model_key)
        else:
            base = load_base_model(space.base_model, task, log=log, progress=progress,
                                   device=accelerator)
    # the stage map as resolved (the space's, the model's stages(), or found from its structure)
    space = space.model_copy(update={"base_model": space.base_model.model_copy(
        update={"stages": {name: list(prefixes) for name, prefixes in base.stages.items()}})})
    setup = pruning_setup(base.module, base.stages, space, task.input_shape, task.num_classes,
                          device.channel_multiple)
    log(preflight(setup, space, task.num_classes).summary())  # refuses what cannot be searched
    knob_units = {knob: list(units) for knob, units in setup.units.items()}  # hwnas/knobs
    for other in devices[1:]:  # every device must run every precision the search may pick
        space_shape(space, other, knob_units)
    shape = space_shape(space, device, knob_units)
    check_enqueued(space, shape)
    return Prepared(space, device, effective_budgets(space, device), task, base, shape, devices,
                    str(accelerator))


def cross_check(space: SearchSpace, space_path: str | Path,
                paths: list[Path]) -> tuple[DeviceProfile, ...]:
    """What the search space and the device profiles must agree on, known from the files
    alone (before a run folder, data or model): the profiles, loaded."""
    devices = tuple(load_device_profile(p) for p in paths)
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"--device: each device profile must have its own name; got {names}")
    for profile, path in zip(devices, paths):
        check_power_is_measured(space, Path(space_path), profile, path)
        refuse_emulated_latency(space, profile, path)
    return devices


def refuse_emulated_latency(space: SearchSpace, profile: DeviceProfile, path: Path) -> None:
    """A device whose accelerator this machine only simulates has no latency to optimise or
    budget: refused before any trial."""
    from hwnas.remote.screen import known_emulation

    why = known_emulation(profile)
    uses = latency_uses(space.objectives, effective_budgets(space, profile))
    if why and uses:
        raise ConfigError(f"device {profile.name} ({path}): {why}. Its latency cannot be used for "
                          f"{', '.join(uses)}: search it with objectives [accuracy, model_size_mb] "
                          f"and model_size_mb / fidelity_cosine_min budgets, as "
                          f"{NPU_SPACE} does")


def study_record(prepared: Prepared) -> StudyRecord:
    from hwnas.torch_device import describe

    return StudyRecord(tuple(sorted(prepared.budgets.limits().items())), prepared.base.key,
                       prepared.base.test_accuracy, tuple(prepared.task.input_shape),
                       prepared.task.preprocessing, tuple(prepared.space.objectives),
                       prepared.budgets.basis, torch_device=describe(prepared.torch_device))


def run_search(space_path: str | Path, device_path: str | Path | list, run_dir: Path | None = None,
               n_trials: int | None = None, progress: bool = True,
               log: Callable[[str], None] = print, fork: bool = False,
               storage: str | None = None, study_name: str | None = None,
               artifact_store: str | None = None, worker: bool = False,
               torch_device: str | None = None, files_root: Path | None = None) -> SearchOutcome:
    """Run (or continue, or join) a search. A study continues only under the configuration it
    ran under (with ``fork``, a changed one gets a new study that keeps the old trials as
    history where they fit: resume.py). Every controller of a study fine-tunes the study's
    one parent on its one split (shared.py); a ``worker`` only joins, it never creates. A
    language model's study shares its model folder and text instead (hwnas/llm/shared.py;
    ``files_root``: where a worker finds them)."""
    from hwnas.search.resume import guard_resume, refuse_changed
    from hwnas.search.shared import (
        PARENT_SECTIONS,
        existing_study,
        fetch_parent,
        refuse_other_space,
        same_sections,
    )
    from hwnas.torch_device import resolve

    resolve(torch_device)  # a device this machine lacks: refused before a run folder exists
    paths = device_paths(device_path)
    space = with_locations(load_search_space(space_path), storage, study_name, artifact_store)
    # after the loader (it names a file that is not text); what the study records and
    # compares holds no credential of a URL (redaction.py)
    space_text = redact(Path(space_path).read_text())
    if space.family == "causal_lm":
        from hwnas.llm.search import run_llm_search

        if space.search.sensitivity:
            raise ConfigError(f"{space_path}: search.sensitivity is for image models (a "
                              f"language model's units are sliced, not exported alone): leave "
                              f"it out")
        return run_llm_search(Path(space_path), paths, space, space_text, run_dir, n_trials,
                              progress, log, fork, torch_device, worker, files_root)
    if files_root is not None:
        raise ConfigError("--files-root: a language model study's files (model folder, text); "
                          "this study searches an image model, whose parent comes from the study")
    devices = cross_check(space, space_path, paths)  # refused before a run folder exists
    run = RunFolder.locate(space, devices[0], run_dir)
    # one writer per run folder: a second search here would run trials beyond n_trials
    with writer_lock(run.path, f"hwnas {'worker' if worker else 'search'}",
                     WORKER_ADVICE if worker else SEARCH_ADVICE), run_log(run.log_path):
        if not fork:
            refuse_changed(run, Path(space_path), paths)
        joined = existing_study(run)
        if worker and (joined is None or joined[1].search_space_yaml is None):
            raise ConfigError(f"no hwnas study {run.study_name!r} in {redact(run.storage_url)}: "
                              f"start it with `hwnas search SPACE.yaml --storage URL` first")
        parent = None
        if joined is not None:
            study, record = joined
            if run.current_config() is None:  # joining from another run folder or machine
                refuse_other_space(study, record, space_text)
            if record.parent_weights_sha256 and same_sections(record, space_text, PARENT_SECTIONS):
                parent = (fetch_parent(run, study, record), record)
        prepared = prepare(space_path, paths, n_trials or (joined[1].n_trials if worker and joined
                                                           else None), log, parent, space,
                           progress, torch_device)
        run = guard_resume(run, prepared.space, prepared.shape, prepared.budgets, Path(space_path),
                           paths, fork, log)
        config_version = run.record_configs(Path(space_path), paths)
        study = open_study(run, prepared.space, log, worker)
        _share(run, study, prepared, space_text, config_version, writer=not worker)
        return optimize(prepared, run, study, config_version, progress, log)


def run_worker(storage: str, study_name: str, device_path: str | Path | list,
               run_dir: Path | None = None, progress: bool = True,
               log: Callable[[str], None] = print, artifact_store: str | None = None,
               torch_device: str | None = None, files_root: Path | None = None) -> SearchOutcome:
    """Join a study on a shared storage: run its recorded search space with this machine's
    devices until the study has the trials it asked for. ``files_root``: where a language
    study's relative paths (model folder, text files) resolve here (default: where they
    resolved for the study's creator)."""
    from hwnas.search.shared import existing_study

    probe = RunFolder(Path("."), storage, study_name)
    joined = existing_study(probe)
    if joined is None or joined[1].search_space_yaml is None:
        raise ConfigError(f"no hwnas study {study_name!r} in {redact(storage)}: start it with "
                          f"`hwnas search SPACE.yaml --storage URL` first")
    store = artifact_store or joined[1].artifact_store
    if store and has_hidden_credentials(store):
        raise ConfigError(f"study {study_name}: its artifact store's credentials are not kept in "
                          f"the study ({store}); give the store with --artifact-store URL")
    with contextlib.ExitStack() as stack:
        if run_dir is None:  # several workers on one machine: each its own default folder
            default = Path("runs") / f"{study_name}--worker"
            for index in range(1, 1000):
                run_dir = default if index == 1 else default.with_name(f"{default.name}-{index}")
                try:
                    stack.enter_context(writer_lock(run_dir, "hwnas worker", WORKER_ADVICE))
                    break
                except RunFolderBusy:
                    continue
        else:
            stack.enter_context(writer_lock(run_dir, "hwnas worker", WORKER_ADVICE))
        space_path = Path(run_dir) / "study-search-space.yaml"
        space_path.write_text(redact(joined[1].search_space_yaml))
        # the study's store unless this machine reaches it elsewhere (another mount point)
        return run_search(space_path, device_path, run_dir, None, progress, log,
                          storage=storage, study_name=study_name, worker=True,
                          artifact_store=store, torch_device=torch_device,
                          files_root=files_root)



def with_locations(space: SearchSpace, storage: str | None, study_name: str | None,
                   artifact_store: str | None) -> SearchSpace:
    """The search space with where-things-live overrides from the command line."""
    changes = {key: value for key, value in (("storage", storage), ("study_name", study_name),
                                             ("artifact_store", artifact_store)) if value}
    return space.model_copy(update={"search": space.search.model_copy(update=changes)}) \
        if changes else space



def _share(run: RunFolder, study: optuna.Study, prepared: Prepared, space_text: str,
           config_version: str, writer: bool) -> None:
    """Fix the study's shared record (the first controller), or check against it (the rest)."""
    from hwnas.search.shared import check_same_parent, publish_parent

    record = StudyRecord.from_study(study)
    weights = publish_parent(run, study, prepared.base,
                             lambda sha256: check_same_parent(study, record, sha256, prepared.task))
    if writer:
        dataclasses.replace(
            study_record(prepared), parent_weights_sha256=weights,
            data_fingerprint=prepared.task.fingerprint, search_space_yaml=space_text,
            config_version=config_version, n_trials=prepared.space.search.n_trials,
            artifact_store=redact(run.store_url)).write(study)
