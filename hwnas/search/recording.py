"""What an evaluator that keeps each trial's TrialOutcome record does around every trial,
whatever it searches (an image model's compression: compression.py; a language model's:
hwnas/llm/trials.py): lease a device of the pool, inherit what a dead controller's trial of
the same candidate measured, copy a finished twin, record the measurement a decision picked,
fail or retry the trial on an error or Ctrl-C, release the device and the work folder."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable

import optuna

from hwnas.budgets import constraint_values, describe_excess
from hwnas.disk import no_space
from hwnas.errors import DeviceError
from hwnas.records import Artifact, Measurement, TrialOutcome, TrialStage
from hwnas.search.candidates import Timings
from hwnas.search.controllers import controller_id, fail_abandoned_trials, retry_trial
from hwnas.search.evaluator import Evaluator, HardwareReport
from hwnas.search.measuring import DeviceLease, TrialMeasurer
from hwnas.search.policy import STAGE_DUPLICATE
from hwnas.search.twins import Progress, finished_twin, reuse

if TYPE_CHECKING:
    from hwnas.config.models import Budgets
    from hwnas.remote.pool import DevicePool
    from hwnas.run import RunFolder


@dataclasses.dataclass
class TrialState:
    """What one trial has built and measured so far (an evaluator adds its own fields)."""

    trial: optuna.Trial
    candidate: Any
    progress: Progress
    measurer: TrialMeasurer
    work: Path
    inherited: TrialOutcome | None = None  # what a dead controller's trial had recorded
    screen: Artifact | None = None  # the bytes screened before fine-tuning or healing
    screen_measurement: Measurement | None = None
    artifact: Artifact | None = None  # the deployed bytes, once evaluated
    measurement: Measurement | None = None
    copied: bool = False  # a duplicate: its record is the trial it copied
    # the measurement behind each report measure() returned (a decision picks one of them)
    behind: list[tuple[HardwareReport, Measurement]] = dataclasses.field(default_factory=list)

    def report(self, report: HardwareReport, measurement: Measurement) -> HardwareReport:
        self.behind.append((report, measurement))
        return report


class RecordingEvaluator(Evaluator):
    """One trial per thread (a pool runs one thread per device). A subclass calls
    ``_recording`` in its constructor and names its ``trial_type``."""

    trial_type: type[TrialState] = TrialState

    def _recording(self, pool: "DevicePool", run: "RunFolder", config_version: str | None) -> None:
        self._pool, self._run, self._config_version = pool, run, config_version
        self._local = threading.local()

    def open_trial(self, trial: optuna.Trial) -> str | None:
        """Lease a device (any of the pool's free ones): the engine proposes for its pool."""
        self.close_trial(trial)
        # a retry of a trial whose controller died carries what that one had measured
        inherited = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING") \
            if trial.user_attrs.get("candidate") is not None else None
        # other controllers' dead trials are retried now, not after a heartbeat grace period
        fail_abandoned_trials(trial.study)
        lease = DeviceLease(self._pool)
        progress = Progress(trial, TrialOutcome(
            TrialStage.RUNNING, config_version=self._config_version, origin=trial.number,
            controller=controller_id(), device=lease.device.name, device_pool=lease.device.pool))
        self._local.now = self.trial_type(
            trial=trial, candidate=None, progress=progress,
            measurer=TrialMeasurer(lease, Timings(), progress),
            work=self._run.work_dir(trial.number), inherited=inherited)
        return lease.device.pool

    def start_trial(self, trial: optuna.Trial, candidate: Hashable) -> None:
        now = self._now()
        now.candidate = candidate
        inherited = now.inherited if now.inherited is not None and \
            now.inherited.candidate == candidate else None
        origin = inherited.origin if inherited and inherited.origin is not None else trial.number
        now.progress.update(candidate=candidate, origin=origin)
        now.measurer.inherit(inherited)

    def twin(self, trial: optuna.Trial, candidate: Hashable, own_pool_only: bool
             ) -> optuna.trial.FrozenTrial | None:
        now = self._current(candidate)
        pools = {now.measurer.lease.device.pool} if own_pool_only else \
            {d.pool for d in self._pool.alive}
        return finished_twin(trial, pools, now.progress)

    def measure(self, candidate: Hashable, rounds: int | None = None) -> HardwareReport:
        """The deployed bytes once evaluated; before that, the screened copy (built once)."""
        now = self._current(candidate)
        if now.artifact is not None:  # the deployed bytes
            now.measurement = now.measurer.measure(now.artifact, rounds)
            now.progress.update(measurement=now.measurement)
            return now.report(self._figures(now.measurement, now.artifact), now.measurement)
        self._screen_copy(now)
        assert now.screen is not None
        now.screen_measurement = now.measurer.measure(now.screen, rounds)
        self._screened(now.screen_measurement)
        now.progress.update(screen_measurement=now.screen_measurement)
        return now.report(self._figures(now.screen_measurement, now.screen),
                          now.screen_measurement)

    def _screen_copy(self, now: Any) -> None:
        """Build the candidate's screened bytes into ``now.screen`` (once per trial)."""
        raise NotImplementedError

    def _figures(self, measurement: Measurement, artifact: Artifact) -> HardwareReport:
        """The figures budgets and objectives name, from one measurement of ``artifact``."""
        raise NotImplementedError

    def _screened(self, measurement: Measurement) -> None:
        """What the screened measurement refuses before anything else (nothing by default)."""

    def decided(self, candidate: Hashable, report: HardwareReport) -> None:
        now = self._current(candidate)
        chosen = next(m for r, m in now.behind if r is report)
        now.behind.clear()
        if now.artifact is not None:
            now.measurement = chosen
            now.progress.update(measurement=chosen)
        else:
            now.screen_measurement = chosen
            now.progress.update(screen_measurement=chosen)

    def trial_failed(self, trial: optuna.Trial, candidate: Hashable | None,
                     exc: Exception) -> bool:
        now = getattr(self._local, "now", None)
        if now is not None:
            now.progress.failed(exc)
        self.close_trial(trial)
        if isinstance(exc, DeviceError):
            # no device of its pool is left: try this candidate again when the search resumes
            if candidate is not None:
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            return not self._pool.alive
        if no_space(exc) is not None:  # every trial after it would fail alike: stop
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            return True
        return False

    def interrupted(self, trial: optuna.Trial) -> None:
        """What it measured stays; the next run retries the candidate first, reusing it."""
        now = getattr(self._local, "now", None)
        if now is not None and now.candidate is not None:
            now.progress.failed(KeyboardInterrupt("interrupted (Ctrl-C)"))
            retry_trial(trial.study, trial.number)

    def close_trial(self, trial: optuna.Trial) -> None:
        """The trial's device back to the pool, its work folder gone, its timings recorded."""
        now = getattr(self._local, "now", None)
        self._local.now = None
        if now is None:
            return
        lease = now.measurer.lease
        if not now.copied:  # a copy keeps the record it copied
            now.progress.update(timings_s=tuple(now.measurer.timings.seconds.items()),
                                device=lease.device.name, device_pool=lease.device.pool,
                                devices_lost=tuple(lease.lost))
        lease.release()
        shutil.rmtree(now.work, ignore_errors=True)

    def _ending(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                earlier: optuna.trial.FrozenTrial | None,
                budgets_of: Callable[[Measurement], "Budgets"]) -> tuple[Any, dict | None]:
        """The trial's state and the record of how it ended (a rejected one: the screened
        bytes, their measurement and which budgets they broke); None for a duplicate, whose
        record is the trial it copies (already written)."""
        now = self._current(candidate)
        if stage == STAGE_DUPLICATE and earlier is not None:
            reuse(trial, earlier, self._config_version)
            now.copied = True
            return now, None
        changes: dict = {"stage": TrialStage(stage)}
        if stage == TrialStage.REJECTED.value and now.screen_measurement is not None:
            assert now.screen is not None
            changes.update(artifact=now.screen, measurement=now.screen_measurement,
                           rejection=describe_excess(constraint_values(
                               budgets_of(now.screen_measurement), now.screen_measurement,
                               now.screen)))
        return now, changes

    def _now(self) -> Any:
        now = getattr(self._local, "now", None)
        if now is None:
            raise RuntimeError("the pipeline called the evaluator outside a trial it opened")
        return now

    def _current(self, candidate: Hashable) -> Any:
        now = self._now()
        if now.candidate != candidate:
            raise RuntimeError("the pipeline called the evaluator outside the trial it started")
        return now
