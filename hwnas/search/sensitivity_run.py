"""`hwnas sensitivity RUN_DIR`: the per-unit sensitivity (sensitivity.py) of a search's base
model (not while a search writes the folder), under the configuration the run last used, kept
in its study."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from hwnas.search.sensitivity import ensure
from hwnas.sensitivity import UnitSensitivity


def sensitivity_of_run(run_dir: Path, overrides: Mapping[str, Any] | None = None,
                       log: Callable[[str], None] = print, progress: bool = False,
                       torch_device: str | None = None) -> tuple[UnitSensitivity, bool]:
    """`hwnas sensitivity RUN_DIR`: the table of a run's base model under the configuration it
    last ran with (its ``search.sensitivity``, else the defaults, each setting ``overrides``
    gives replaced), kept in its study; nothing is measured where the study has it already.
    Runs on this machine only: no device is reached."""
    from hwnas.config.search import SensitivitySettings
    from hwnas.logs import run_log
    from hwnas.records import StudyRecord
    from hwnas.run import RunFolder
    from hwnas.run_lock import writer_lock
    from hwnas.search.candidates import CandidateBuilder, seed_everything
    from hwnas.search.finalize import config_paths
    from hwnas.search.optimize import trial_context
    from hwnas.search.shared import PARENT_SECTIONS, fetch_parent, same_sections
    from hwnas.search.study import prepare
    from hwnas.torch_device import resolve

    resolve(torch_device)  # refused before the run folder is locked
    run = RunFolder.load(run_dir)
    with writer_lock(run.path, "hwnas sensitivity"), run_log(run.log_path):
        study = run.open_study()
        if study.user_attrs.get("model_family") == "causal_lm":
            from hwnas.errors import ConfigError

            raise ConfigError(f"{run.path}: per-unit sensitivity is measured for image models "
                              f"only (a language model's units are sliced, not exported alone)")
        version = run.current_config()
        space_path, device_paths = config_paths(run, version)
        record = StudyRecord.from_study(study)
        parent = (fetch_parent(run, study, record), record) \
            if record.parent_weights_sha256 and same_sections(record, space_path.read_text(),
                                                              PARENT_SECTIONS) else None
        prepared = prepare(space_path, device_paths, log=log, parent=parent,
                           progress=progress, torch_device=torch_device)
        settings = with_overrides(prepared.space.search.sensitivity or SensitivitySettings(),
                                  overrides or {})
        seed_everything(prepared.space.search.seed)
        builder = CandidateBuilder(trial_context(prepared, None, run, version))  # type: ignore[arg-type]
        return ensure(study, builder, settings, log, progress)


def with_overrides(settings: Any, overrides: Mapping[str, Any]) -> Any:
    """The space's settings with the command line's given ones replaced, checked again (a
    wrong flag names itself)."""
    from pydantic import ValidationError

    from hwnas.errors import ConfigError

    try:
        return type(settings)(**{**settings.model_dump(), **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None
