"""Resuming safely: a study continues only under the configuration its trials ran under.

A changed search space or device profile would mix trials scored under different rules in
one study (and Optuna itself refuses changed parameter choices). The search refuses, shows
what changed, and offers two ways out: a new run folder, or `--fork`: a new study in the
same run folder that keeps the old trials as history where they still fit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from hwnas import metrics
from hwnas.budgets import breaks_a_budget, constraint_values, objective_values
from hwnas.config.safe_yaml import read_yaml
from hwnas.errors import ConfigError, excerpt
from hwnas.records import TrialOutcome, TrialStage
from hwnas.redaction import redact
from hwnas.run import RUN_FILE, SPACE_FILE, RunFolder, device_file, outcomes
from hwnas.storage import make_storage
from hwnas.space import distributions, fits

# changes that leave every finished trial's figures valid
SPACE_HARMLESS = ("search.n_trials", "search.enqueue", "search.sensitivity",
                  "search.engine_order")  # taken out: a study that had it goes on without
# how the device is reached (a restarted agent on a new port, a new key) leaves its figures valid
DEVICE_HARMLESS = ("description", "connection")
# what must be unchanged for an old trial's accuracy and measurements to mean the same
ACCURACY_SECTIONS = ("base_model", "dataset", "finetune")
MEASUREMENT_SECTIONS = ("runtime", "measurement", "power", "precisions", "channel_multiple",
                        "name")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def config_changes(before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every setting that differs (YAML meaning, not formatting)."""
    old, new = flatten(before or {}), flatten(after or {})
    return [(key, old.get(key, "(unset)"), new.get(key, "(unset)"))
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


@dataclasses.dataclass(frozen=True)
class ConfigDiff:
    space: list[tuple[str, Any, Any]]
    devices: list[tuple[str, Any, Any]]  # keys prefixed with the device file

    def significant(self) -> list[tuple[str, Any, Any]]:
        return [c for c in self.space if not _under(_key(c), SPACE_HARMLESS)] + \
            [c for c in self.devices if not _under(_key(c), DEVICE_HARMLESS)]

    def touches(self, sections: Sequence[str], devices: bool = False) -> bool:
        return any(_key(c).split(".")[0] in sections for c in (self.devices if devices else self.space))


def _key(change: tuple[str, Any, Any]) -> str:
    return change[0].split(":", 1)[-1]  # without the device file's name


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def diff(run: RunFolder, version: str, space_path: Path, device_paths: Sequence[Path]) -> ConfigDiff:
    def read(path: Path) -> Any:
        # as the run folder keeps it: a password in a URL is no change (nor shown in one)
        return read_yaml(redact(path.read_text()), str(path))

    space = config_changes(run.config(version, SPACE_FILE), read(space_path))
    devices: list[tuple[str, Any, Any]] = []
    for index in range(max(len(device_paths), 1)):
        before = run.config(version, device_file(index))
        after = read(device_paths[index]) if index < len(device_paths) else None
        devices += [(f"{device_file(index)}:{key}", old, new)
                    for key, old, new in config_changes(before, after)]
    return ConfigDiff(space, devices)


def refusal(run: RunFolder, previous: str, changes: list[tuple[str, Any, Any]]) -> ConfigError:
    shown = "\n".join(f"  {key}: {excerpt(old)} -> {excerpt(new)}" for key, old, new in changes[:30])
    more = f"\n  ... and {len(changes) - 30} more" if len(changes) > 30 else ""
    return ConfigError(
        f"{run.path}: the configuration changed since this study's trials ran (config "
        f"{previous} in {run.path / 'configs' / previous}):\n{shown}{more}\n"
        f"Its trials were built, measured and scored under the old one. Either\n"
        f"  - start a new study: the same command with --run-dir <a new folder>, or\n"
        f"  - fork this one: the same command with --fork (a new study in this run folder that "
        f"keeps the old trials as history where they fit the new configuration)")


@dataclasses.dataclass(frozen=True)
class FamilyRecord:
    """What a model family keeps in a trial besides its TrialOutcome (a language model's
    ``llm`` attribute: perplexity, MCQ accuracy, the kept folder) and the evaluation figures
    read from it: carried into a fork's copies, whose objectives and budgets on those figures
    keep their values (the worst value otherwise)."""

    attributes: tuple[str, ...] = ()
    figures: Callable[[Mapping[str, Any]], Mapping[str, float]] = lambda _attrs: {}


def fork_study(run: RunFolder, change: ConfigDiff, new_version: str, space: Any,
               shape: Any, budgets: Any, log: Callable[[str], None],
               family: FamilyRecord = FamilyRecord()) -> RunFolder:
    """A new study beside the old one, seeded with the old trials that still mean the same."""
    base_name = run.study_name.split("@", 1)[0]
    forked = dataclasses.replace(run, study_name=f"{base_name}@{new_version}")
    old = run.open_study()
    directions = metrics.directions(space.objectives)
    study = optuna.create_study(storage=make_storage(forked.storage_url),
                                study_name=forked.study_name, directions=directions,
                                load_if_exists=True)
    if study.get_trials(deepcopy=False):
        log(f"fork {forked.study_name} exists already: continuing it")
        return forked
    comparable = not change.touches(ACCURACY_SECTIONS) and \
        not change.touches(MEASUREMENT_SECTIONS, devices=True)
    kept = 0
    if comparable:
        wanted = distributions(space, shape)
        for trial, outcome in zip(old.get_trials(deepcopy=False), outcomes(old)):
            copy = _as_history(trial, outcome, wanted, space, budgets, old.study_name, family)
            if copy is not None:
                study.add_trial(copy)
                kept += 1
    why = "" if comparable else (" (none kept: the model, data, fine-tuning or the device's "
                                 "measurement settings changed, so old figures mean other things)")
    log(f"forked {run.study_name} into {forked.study_name}: {kept} of "
        f"{len(old.get_trials(deepcopy=False))} trials kept as history{why}")
    return forked


def _as_history(trial: optuna.trial.FrozenTrial, outcome: TrialOutcome, wanted: dict[str, Any],
                space: Any, budgets: Any, source: str,
                family: FamilyRecord = FamilyRecord()) -> optuna.trial.FrozenTrial | None:
    if trial.state != TrialState.COMPLETE or set(trial.params) != set(wanted):
        return None
    if not all(fits(wanted[name], value) for name, value in trial.params.items()):
        return None
    if outcome.measurement is None or outcome.artifact is None:
        return None
    if outcome.finalized_from is not None:  # a longer fine-tune: not a search trial's figures
        return None
    constraints = constraint_values(budgets, outcome.measurement, outcome.artifact)
    evaluated: Mapping[str, float] = {}
    if outcome.stage == TrialStage.REJECTED:
        if not breaks_a_budget(constraints):
            return None  # within the new budgets, but never fine-tuned: it needs a real trial
        accuracy = 0.0
    elif outcome.stage == TrialStage.EVALUATED and outcome.accuracy_val is not None:
        accuracy = outcome.accuracy_val
        # the evaluation's figures (perplexity) against the new budgets, as the evaluator
        # decides them for a trial it evaluated
        evaluated = family.figures(trial.user_attrs)
        constraints.update({name: metrics.get(name).constraint(evaluated[name], limit)
                            for name, limit in budgets.limits().items()
                            if not metrics.get(name).screenable and name in evaluated})
    else:
        return None
    copied = dataclasses.replace(outcome, copied_from=f"{source}#{trial.number}")
    values = objective_values(space, accuracy, outcome.measurement, outcome.artifact,
                              budgets.basis)
    values = (values[0], *(evaluated.get(name, value) for name, value
                           in zip(space.objectives[1:], values[1:])))
    carried = {key: trial.user_attrs[key] for key in family.attributes if key in trial.user_attrs}
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, params=trial.params,
        distributions={name: wanted[name] for name in trial.params},
        values=values, user_attrs={**carried, **copied.attributes()}, constraints=constraints,
        # the kept bytes stay where they are: the copy points at the same artifacts
        system_attrs={k: v for k, v in trial.system_attrs.items() if k.startswith("artifacts:")})


def _changed(run: RunFolder, space_path: Path, device_paths: Sequence[Path]
             ) -> tuple[Any, Any, str, str] | None:
    """(change, its significant part, previous version, new version) where the run folder
    has trials under another configuration that matters; None where it may simply go on."""
    previous = run.current_config()
    if previous is None:
        return None
    try:
        has_trials = bool(run.open_study().get_trials(deepcopy=False))
    except ConfigError:  # no study in the storage yet
        has_trials = False
    new_version = RunFolder.config_version(space_path, device_paths)
    if not has_trials or new_version == previous:
        return None
    change = diff(run, previous, space_path, device_paths)
    significant = change.significant()
    return (change, significant, previous, new_version) if significant else None


def refuse_changed(run: RunFolder, space_path: Path, device_paths: Sequence[Path]) -> None:
    """The refusal of ``guard_resume`` without ``fork``, from the files alone: before the
    data, the base model and the pre-flight are loaded for a run that cannot go on."""
    changed = _changed(run, space_path, device_paths)
    if changed is not None:
        raise refusal(run, changed[2], changed[1])


def guard_resume(run: RunFolder, space: Any, shape: Any, budgets: Any, space_path: Path,
                 device_paths: Sequence[Path], fork: bool, log: Callable[[str], None],
                 family: FamilyRecord = FamilyRecord()) -> RunFolder:
    """The run folder to continue in: this one if its configuration is unchanged (or it has no
    trials yet), a fork if asked for; otherwise a refusal that shows the changes."""
    changed = _changed(run, space_path, device_paths)
    if changed is None:
        return fork_in_use(run)
    change, significant, previous, new_version = changed
    if not fork:
        raise refusal(run, previous, significant)
    return fork_study(run, change, new_version, space, shape, budgets, log, family)


def fork_in_use(run: RunFolder) -> RunFolder:
    """The fork this run folder's last search made under its current configuration, where
    there is one: the same command again goes on in the fork, not in the study it forked."""
    try:  # the study name alone: a storage password kept out of run.json is not needed
        recorded = json.loads((run.path / RUN_FILE).read_text()).get("study_name")
    except (OSError, ValueError, AttributeError):
        return run
    if recorded == f"{run.study_name.split('@', 1)[0]}@{run.current_config()}":
        return dataclasses.replace(run, study_name=recorded)
    return run
