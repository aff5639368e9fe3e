"""Running a study's trials: every sampler through the one trial pipeline (pipeline.py), one
trial per device of the pool at a time, until the study has its trials; then the retries of
trials a stopped controller left, and the one-line verdict when every trial failed."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from hwnas.config.models import DeviceProfile
from hwnas.errors import DeviceError, HwnasError
from hwnas.interrupts import check as check_interrupt
from hwnas.interrupts import held as interrupts_held
from hwnas.records import StudyRecord, TrialStage
from hwnas.redaction import redact
from hwnas.run import RunFolder, completed_search_trials, outcomes
from hwnas.search.controllers import fail_abandoned_trials, fail_own_trials
from hwnas.search import unit_profile
from hwnas.search.prepared import Prepared, SearchOutcome

if TYPE_CHECKING:
    from hwnas.remote.pool import DevicePool
    from hwnas.search.evaluator import Evaluator
    from hwnas.search.candidates import CandidateBuilder, TrialContext


def trial_context(prepared: Prepared, pool: "DevicePool", run: RunFolder,
                  config_version: str | None = None) -> "TrialContext":
    from hwnas.search.candidates import TrialContext

    return TrialContext(prepared.space, prepared.device, prepared.budgets, prepared.task,
                        prepared.base.module, prepared.shape, pool, run, config_version,
                        prepared.device_budgets(), prepared.torch_device)


@contextlib.contextmanager
def open_pool(profiles: tuple[DeviceProfile, ...]) -> Iterator["DevicePool"]:
    """Every device connected and version-checked, or a clear error naming the one that is not."""
    from hwnas.remote.device import open_device
    from hwnas.remote.pool import Device, DevicePool

    with contextlib.ExitStack() as stack:
        devices = [Device(profile, stack.enter_context(open_device(profile)))
                   for profile in profiles]
        yield DevicePool(devices)


class MaxSearchTrials:
    """Stop the study once it has ``n_trials`` completed search trials, whichever controller
    ran them (Optuna's MaxTrialsCallback, but trials `hwnas finalize` added do not count)."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if completed_search_trials(study) >= self.n_trials:
            study.stop()


def optimize(prepared: Prepared, run: RunFolder, study: optuna.Study, config_version: str,
              progress: bool, log: Callable[[str], None],
              evaluator_of: "Callable[[DevicePool], Evaluator] | None" = None) -> SearchOutcome:
    """Every sampler through the one trial pipeline: one trial per device of the pool at a
    time, until the study has its ``n_trials`` completed search trials (whichever controller
    ran them); a failing trial (lost device, a candidate that cannot be built) records its
    reason and fails alone, not the study. ``evaluator_of``: what the trials search, given
    the pool (default: an image model's compression, hwnas/search/compression.py; a language
    model's is hwnas/llm/trials.py)."""
    from hwnas.search.budget_reach import check_budgets
    from hwnas.search.candidates import seed_everything
    from hwnas.search.compression import CompressionEvaluator
    from hwnas.search.engine import write_summary
    from hwnas.search.pipeline import TrialPipeline, stop_when_exhausted
    from hwnas.search.policy import COMPRESSION, PLAIN
    from hwnas.search.progress import ProgressCallback
    from hwnas.search.proposer import EngineSampler

    space = prepared.space
    seed_everything(space.search.seed)
    completed = completed_search_trials(study)
    remaining = max(0, space.search.n_trials - completed)
    log(f"study {run.study_name}: {completed} trials done, {remaining} to go "
        f"(storage {redact(run.storage_url)})")
    if remaining == 0:
        return SearchOutcome(run, study, 0)
    with open_pool(prepared.devices) as pool:
        if evaluator_of is not None:
            evaluator = evaluator_of(pool)
        else:
            evaluator = CompressionEvaluator(trial_context(prepared, pool, run, config_version))
            _measure_base_model(study, evaluator.ctx, evaluator.builder, log)
            check_budgets(study, evaluator.ctx, evaluator.builder, log)  # before any fine-tune
            if space.search.sensitivity is not None:  # once per base model: kept in the study
                from hwnas.search.sensitivity import ensure

                ensure(study, evaluator.builder, space.search.sensitivity, log, progress)
        engine = None
        if space.search.sampler == "engine":
            engine = EngineSampler(evaluator, COMPRESSION, space.search.seed, base=study.sampler)
            study.sampler = engine
        pipeline = TrialPipeline(evaluator, COMPRESSION if engine else PLAIN, engine,
                                 tuple(space.objectives[1:]), log)
        bar = ProgressCallback(remaining, enabled=progress, study=study)
        # several controllers on one study: stop when the study has its trials
        callbacks = [bar, MaxSearchTrials(space.search.n_trials),
                     lambda _study, _trial: check_interrupt()]
        if engine is not None:
            callbacks += [stop_when_exhausted(engine),
                          lambda study, _trial: write_summary(study, engine)]
        try:
            with interrupts_held():
                study.optimize(pipeline, n_trials=remaining, n_jobs=len(pool),
                               callbacks=callbacks, catch=(Exception,), gc_after_trial=True)
                check_interrupt()
                if not pool.alive:
                    done = sum(t.state == TrialState.COMPLETE
                               for t in study.get_trials(deepcopy=False))
                    raise DeviceError(f"every device was lost; the study keeps its {done} "
                                      f"completed trials: run the same command again to continue")
                if pipeline.fatal is not None:
                    raise pipeline.fatal  # e.g. a full disk: the CLI names it
                retried = _run_retries(study, pipeline, len(pool), log)
                check_interrupt()
                if evaluator_of is None:  # an image model: the best one's time per module
                    unit_profile.profile_best(study, evaluator.ctx, log)
        except KeyboardInterrupt:
            # what it measured stays; the next run retries the candidate first
            fail_own_trials(study)
            raise
        finally:
            bar.close()
    fail_abandoned_trials(study)  # none left RUNNING by a controller that died meanwhile
    ran = bar.done + retried
    _refuse_all_failed(study, ran)
    return SearchOutcome(run, study, ran)


def _run_retries(study: optuna.Study, objective: Any, n_jobs: int,
                 log: Callable[[str], None]) -> int:
    """Before a controller leaves a study that has its trials: the candidates of trials whose
    controller died (retried as WAITING trials) are run, and a trial another controller still
    runs is waited for until it finishes or its heartbeat goes stale (then it is retried
    here). Nothing a killed worker had started is left behind."""
    from hwnas.storage import HEARTBEAT_S

    ran = 0
    while True:
        fail_abandoned_trials(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting:
            log(f"running {waiting} retried trial(s) of a controller that stopped")
            study.optimize(objective, n_trials=waiting, n_jobs=min(n_jobs, waiting),
                           catch=(Exception,), gc_after_trial=True)
            ran += waiting
        elif trials:
            time.sleep(HEARTBEAT_S / 2)  # another controller's trial: it ends or goes stale
        else:
            return ran


def _measure_base_model(study: optuna.Study, ctx: "TrialContext", builder: "CandidateBuilder",
                        log: Callable[[str], None]) -> None:
    """The unpruned parent measured once per study on the search's device: model cards give
    it beside each trial's latency."""
    from hwnas.search.measuring import measure_base_model

    record = StudyRecord.from_study(study)
    if record.base_model_measurement is not None:
        return
    artifact, measurement, units = measure_base_model(ctx, builder)
    dataclasses.replace(record, base_model_measurement=measurement,
                        base_model_size_bytes=artifact.size_bytes).write(study)
    unit_profile.record(study, "base", unit_profile.entry("base model (fp32)", measurement, units))
    emulated = " of the simulator" if measurement.emulated else ""
    most = f"; most time{emulated} in {units[0].unit} ({units[0].share:.0%})" if units else ""
    latency = "latency not measured (emulated: a simulator's timing is not the device's)" \
        if measurement.emulated else f"latency p90 {measurement.latency_ms_p90:.3f} ms"
    log(f"base model (unpruned, fp32): {latency} on {measurement.device}, "
        f"{artifact.size_mb:.2f} MB{most}")


class AllTrialsFailed(HwnasError):
    """Every trial of this run failed: the search found nothing, and says why."""


def _refuse_all_failed(study: optuna.Study, ran: int) -> None:
    latest = outcomes(study)[-ran:] if ran else []
    failed = [o for o in latest if o.stage == TrialStage.FAILED]
    if latest and len(failed) == len(latest):
        reason, count = collections.Counter(o.failure for o in failed).most_common(1)[0]
        raise AllTrialsFailed(f"all {len(latest)} trials of this run failed; most common reason "
                              f"({count} of {len(latest)}): {reason}")
