"""`hwnas finalize`: finish the winners, so a user gets the best model, not the best short
fine-tune.

The search ranks candidates by a short, bounded fine-tune. Finalizing takes the K most
accurate feasible search trials, builds each candidate again from the study's own parent,
distils it for much longer, exports it, evaluates the exported bytes (accuracy, output
fidelity), measures them on a device of the trial's pool and records the result as a new
trial of the study: ``finalized_from`` names the trial it finishes, and it carries the same
records as any evaluated trial (its own kept bytes and PyTorch weights, accuracies, fidelity,
measurement and budget decision: a finalized model can break a budget its short version met,
since the bytes are new). Nothing is recorded until the finalized model is measured, so an
interrupted run leaves the study as it was; running it again skips trials already finalized
(``again`` finalizes them once more).

Finalized trials are COMPLETE trials with values and constraints, so the report's front and
best feasible trial include them; they are not search trials (run.is_search_trial): they do
not count toward ``n_trials``, are never a twin to copy, never retried by the search and never
copied into a fork.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import optuna

from hwnas.budgets import constraint_values, objective_values
from hwnas.errors import ConfigError
from hwnas.records import FineTuneReport, StudyRecord, TrialOutcome, TrialStage
from hwnas.run import SPACE_FILE, RunFolder, device_file, outcomes

if TYPE_CHECKING:
    from hwnas.config.models import FineTuneSettings
    from hwnas.search.candidates import CandidateBuilder, TrialContext

FULL_FIDELITY_FACTOR = 10  # default: ten times the search's fine-tuning steps and seconds


@dataclasses.dataclass(frozen=True)
class Finalized:
    source: TrialOutcome  # the search trial
    outcome: TrialOutcome  # its finalized trial (number set)
    reused: bool = False  # finalized by an earlier run, not now


def pick(found: list[TrialOutcome], top: int) -> list[TrialOutcome]:
    """The ``top`` most accurate feasible search trials (validation accuracy: what the search
    selects on), one per candidate (a twin's copy is the same candidate)."""
    ranked = sorted((o for o in found if o.feasible and o.finalized_from is None),
                    key=lambda o: -(o.accuracy_val or 0.0))
    chosen: list[TrialOutcome] = []
    for outcome in ranked:
        if len(chosen) == top:
            break
        if all(outcome.candidate != other.candidate for other in chosen):
            chosen.append(outcome)
    return chosen


def config_paths(run: RunFolder, version: str | None) -> tuple[Path, list[Path]]:
    """The search space and device profiles a trial ran under, as the run folder kept them."""
    folder = run.path / "configs" / str(version)
    if version is None or not (folder / SPACE_FILE).is_file():
        raise ConfigError(f"{run.path}: the configuration {version} of this trial is not kept in "
                          f"{run.path / 'configs'}; run finalize on the run folder the search "
                          f"wrote")
    devices = []
    for index in range(64):
        path = folder / device_file(index)
        if not path.is_file():
            break
        devices.append(path)
    return folder / SPACE_FILE, devices


def finalize_run(run_dir: Path, top: int, max_steps: int | None = None,
                 max_seconds: float | None = None, again: bool = False,
                 log: Callable[[str], None] = print, progress: bool = False,
                 torch_device: str | None = None) -> list[Finalized]:
    """Finalize the ``top`` best feasible trials of a run (see the module's docstring).
    ``max_steps``/``max_seconds`` default to ten times the search's fine-tuning; ``progress``:
    a bar of each long fine-tune (and of training the base model, where it is not cached);
    ``torch_device``: where it runs (--torch-device, auto by default)."""
    from hwnas.logs import run_log
    from hwnas.run_lock import writer_lock
    from hwnas.torch_device import resolve

    resolve(torch_device)  # refused before the run folder is locked

    if top < 1:
        raise ConfigError(f"--top {top}: give how many of the best feasible trials to finalize "
                          f"(1 or more)")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps {max_steps}: give the fine-tuning steps (1 or more)")
    if max_seconds is not None and max_seconds <= 0:
        raise ConfigError(f"--max-seconds {max_seconds:g}: give the fine-tuning time limit in "
                          f"seconds (more than 0)")
    run = RunFolder.load(run_dir)
    with writer_lock(run.path, "hwnas finalize"), run_log(run.log_path):
        study = run.open_study()
        if study.user_attrs.get("model_family") == "causal_lm":
            raise ConfigError(f"{run.path}: a language model's study is not finalized yet; heal "
                              f"longer with finetune.max_steps in its space and search again "
                              f"(each trial's folder is already its deployable bytes)")
        found = outcomes(study)
        chosen = pick(found, top)
        if not chosen:
            raise ConfigError(f"{run.path}: no search trial meets every budget yet: nothing to "
                              f"finalize (run `hwnas search` for more trials, or relax the "
                              f"budgets)")
        if len(chosen) < top:
            log(f"only {len(chosen)} feasible candidate(s) in {run.path}: finalizing "
                f"{'it' if len(chosen) == 1 else 'them'}")
        results: list[Finalized] = []
        for version in dict.fromkeys(o.config_version for o in chosen):
            group = [o for o in chosen if o.config_version == version]
            results += _finalize_group(run, study, found, group, version, max_steps,
                                       max_seconds, again, log, progress, torch_device)
        return results


def _finalize_group(run: RunFolder, study: optuna.Study, found: list[TrialOutcome],
                    group: list[TrialOutcome], version: str | None, max_steps: int | None,
                    max_seconds: float | None, again: bool,
                    log: Callable[[str], None], progress: bool,
                    torch_device: str | None) -> list[Finalized]:
    """Finalize the chosen trials that ran under one configuration version."""
    from hwnas.search.candidates import CandidateBuilder, seed_everything
    from hwnas.search.shared import PARENT_SECTIONS, fetch_parent, same_sections
    from hwnas.search.optimize import open_pool, trial_context
    from hwnas.search.study import prepare

    space_path, device_paths = config_paths(run, version)
    record = StudyRecord.from_study(study)
    # the study's own parent, exactly as the search fine-tuned from it
    parent = (fetch_parent(run, study, record), record) \
        if record.parent_weights_sha256 and same_sections(record, space_path.read_text(),
                                                          PARENT_SECTIONS) else None
    prepared = prepare(space_path, device_paths, log=log, parent=parent, progress=progress,
                       torch_device=torch_device)
    searched = prepared.space.finetune
    settings = searched.model_copy(update={
        "max_steps": max_steps if max_steps is not None
        else FULL_FIDELITY_FACTOR * searched.max_steps,
        "max_seconds": max_seconds if max_seconds is not None
        else FULL_FIDELITY_FACTOR * searched.max_seconds})
    seed_everything(prepared.space.search.seed)
    results = []
    with open_pool(prepared.devices) as pool:
        ctx = trial_context(prepared, pool, run, version)
        builder = CandidateBuilder(ctx)
        for source in group:
            earlier = next((o for o in reversed(found) if o.finalized_from == source.number
                            and o.stage == TrialStage.EVALUATED), None)
            if earlier is not None and not again:
                log(f"trial {source.number}: finalized already as trial {earlier.number} "
                    f"({earlier.finetune.steps if earlier.finetune else '?'} fine-tuning steps); "
                    f"--again fine-tunes it once more")
                results.append(Finalized(source, earlier, reused=True))
                continue
            log(f"trial {source.number}: fine-tuning {source.summary()} for up to "
                f"{settings.max_steps} steps / {settings.max_seconds:g} s "
                f"(the search: {searched.max_steps} steps / {searched.max_seconds:g} s)")
            outcome = _finalize_one(ctx, builder, study, source, settings, version, progress)
            results.append(Finalized(source, outcome))
            log(f"trial {source.number} -> finalized trial {outcome.number}: validation accuracy "
                f"{source.accuracy_val:.4f} -> {outcome.accuracy_val:.4f}, test "
                f"{source.accuracy_test:.4f} -> {outcome.accuracy_test:.4f}, "
                f"{'meets every budget' if outcome.feasible else 'BREAKS a budget'}")
    return results


def _finalize_one(ctx: "TrialContext", builder: "CandidateBuilder", study: optuna.Study,
                  source: TrialOutcome, settings: "FineTuneSettings",
                  version: str | None, progress: bool = False) -> TrialOutcome:
    """One candidate: pruned again, distilled longer, exported, evaluated, measured; recorded
    as a new trial only once all of that is done."""
    from hwnas.compress.finetune import finetune
    from hwnas.evaluate import FIDELITY_SAMPLES, onnx_split_accuracy, output_fidelity
    from hwnas.progress import progress_bar
    from hwnas.search.controllers import controller_id
    from hwnas.search.candidates import Timings, refuse_emulated_latency
    from hwnas.search.measuring import DeviceLease, TrialMeasurer

    assert source.candidate is not None and source.number is not None
    timings = Timings()
    work = ctx.run.path / "work" / f"finalize-{source.number}"
    lease = DeviceLease(ctx.devices, source.device_pool)
    try:
        with timings.phase("prune"):
            pruned = builder.prune_with_plan(source.candidate)
        origin = source.origin if source.origin is not None else source.number
        with timings.phase("finetune"), progress_bar(settings.max_steps, "step",
                                                     f"finalize trial {source.number}",
                                                     progress) as bar:
            def step(loss: float) -> None:
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                bar.update(1)

            tune = finetune(pruned.module, ctx.base_model, ctx.task, settings,
                            seed=source.candidate.finetune_seed(ctx.space.search.seed),
                            on_step=step, device=ctx.torch_device)
        with timings.phase("quantize_export"):
            artifact = builder.export(pruned.module, source.candidate, work / "model.onnx")
            parent = builder.export_parent(pruned.module, work / "parent.onnx")
        with timings.phase("evaluate"):
            accuracy_val = onnx_split_accuracy(artifact, ctx.task.validation)
            accuracy_test = onnx_split_accuracy(artifact, ctx.task.test)
        with timings.phase("fidelity"):
            held_out = ctx.task.validation
            samples = held_out.load(np.arange(min(FIDELITY_SAMPLES, len(held_out))))
            fidelity = output_fidelity(parent, artifact, samples, lease.device.profile)
        measurement = TrialMeasurer(lease, timings).measure(artifact)  # the deployed bytes
        budgets = ctx.budgets_for(measurement)
        refuse_emulated_latency(ctx.space, budgets, measurement)
        outcome = TrialOutcome(
            TrialStage.EVALUATED, candidate=source.candidate, artifact=artifact,
            measurement=measurement, accuracy_val=accuracy_val, accuracy_test=accuracy_test,
            output_fidelity=fidelity, finetune=FineTuneReport.from_dict(tune),
            timings_s=tuple(timings.seconds.items()), device=lease.device.name,
            device_pool=lease.device.pool, devices_lost=tuple(lease.lost),
            config_version=version, origin=origin, controller=controller_id(),
            finalized_from=source.number)
        trial = _new_trial(study, source, outcome)
        ctx.run.keep_artifact(artifact, trial)
        builder.keep_pytorch(pruned, artifact, trial, work)
        for key, value in constraint_values(budgets, measurement, artifact, fidelity).items():
            trial.set_constraint(key, value)
        study.tell(trial, list(objective_values(ctx.space, accuracy_val, measurement, artifact,
                                                budgets.basis)))
        return TrialOutcome.from_trial(study.get_trials(deepcopy=False)[trial.number])
    finally:
        lease.release()
        shutil.rmtree(work, ignore_errors=True)


def _new_trial(study: optuna.Study, source: TrialOutcome, outcome: TrialOutcome) -> optuna.Trial:
    """A RUNNING trial of the source's parameters holding the outcome, to attach the kept
    files to before it is told its values."""
    frozen = study.get_trials(deepcopy=False)[source.number]  # type: ignore[index]
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params=frozen.params,
        distributions=frozen.distributions, user_attrs=outcome.attributes()))
    # the newest RUNNING trial this controller added for this source (other controllers may
    # add trials meanwhile)
    created = next(t for t in reversed(study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if (found := TrialOutcome.from_trial(t)).finalized_from == source.number
        and found.controller == outcome.controller)
    return optuna.Trial(study, created._trial_id)
