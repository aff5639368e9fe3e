"""The compression search as an `Evaluator`: what the one trial pipeline (pipeline.py) runs
for every sampler, the engine's as well as Optuna's.

The engine's policy (proposer.py) is the same code that searches the NAS-Bench-201 replay;
this module is what it talks to. A trial leases a device of the pool first (the engine
proposes for that device's pool). Cheap calls: prune + quantize + export the candidate,
screen it for the device's accelerator, and measure it on the leased device (before
fine-tuning: what screening decides on; after: the deployed bytes, which decide). Expensive
call: fine-tune at a fidelity, export, evaluate the bytes. One trial per thread: a pool of
devices runs one thread per device.

Each trial keeps its record in TrialOutcome: reports, model cards, `hwnas finalize` and a
resumed search read it the same way. A trial left by a killed controller is retried
(WAITING) and reuses what it had measured.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import optuna
import torch

from hwnas import metrics
from hwnas.budgets import constraint_values, describe_excess, measured
from hwnas.config.models import Budgets
from hwnas.compress.prune import PrunedModel
from hwnas.disk import no_space
from hwnas.errors import DeviceError
from hwnas.records import Artifact, Candidate, Measurement, OutputFidelity, TrialOutcome, TrialStage
from hwnas.remote.screen import needs_screening
from hwnas.search.controllers import controller_id, fail_abandoned_trials, retry_trial
from hwnas.export.onnx import ExportedModel
from hwnas.search.policy import STAGE_DUPLICATE
from hwnas.search.evaluator import (AcceleratorVerdict, Budget, Evaluator, HardwareFigure, HardwareReport,
                                    figures_from_measurement)
from hwnas.search.candidates import (CandidateBuilder, Timings, TrialContext,
                                     refuse_emulated_latency, train_and_evaluate)
from hwnas.search.measuring import DeviceLease, TrialMeasurer
from hwnas.search.twins import Progress, finished_twin, reuse
from hwnas.models.core import multiply_accumulates
from hwnas.space import distributions, suggest, uniform_ladders

# figures the exported bytes give exactly, before any device sees them
_STATIC = ("model_size_mb",)

def compression_figures(measurement: Measurement, artifact: Artifact, basis: str,
                        wanted: Sequence[str]) -> HardwareReport:
    """Every figure a budget or objective names (the metric registry's names), those the
    agent's rounds give an interval for (the latencies) with it (screening re-measures when
    it holds the budget); the energy there is the total, so another basis stays exact."""
    exact = measured(measurement, artifact, basis, tuple(wanted))
    noisy = {f.name: f for f in figures_from_measurement(measurement).figures}
    figures = tuple(noisy[name] if name in noisy and noisy[name].value == value
                    else HardwareFigure.exact(name, value) for name, value in exact.items())
    return HardwareReport(figures, {"model_sha256": artifact.sha256,
                                    "device": measurement.device})


def _budgets(budgets: Budgets) -> tuple[Budget, ...]:
    # the output-fidelity floor is known only after fine-tuning: set by end_trial
    return tuple(Budget(name, limit, metrics.get(name).higher_is_better)
                 for name, limit in budgets.limits().items() if name != "fidelity_cosine_min")


@dataclasses.dataclass
class _Trial:
    """What one trial has built and measured so far."""

    trial: optuna.Trial
    candidate: Candidate | None
    progress: Progress
    measurer: TrialMeasurer
    work: Path
    inherited: TrialOutcome | None = None  # what a dead controller's trial had recorded
    pruned: PrunedModel | None = None
    exported: ExportedModel | None = None
    screen: Artifact | None = None
    screen_measurement: Measurement | None = None
    artifact: Artifact | None = None  # the deployed bytes, once fine-tuned
    measurement: Measurement | None = None
    fidelity: OutputFidelity | None = None
    copied: bool = False  # a duplicate: its record is the trial it copied
    # the measurement behind each report measure() returned (a decision picks one of them)
    behind: list[tuple[HardwareReport, Measurement]] = dataclasses.field(default_factory=list)

    def report(self, report: HardwareReport, measurement: Measurement) -> HardwareReport:
        self.behind.append((report, measurement))
        return report


class CompressionEvaluator(Evaluator):
    measure_after_evaluation = True

    def __init__(self, ctx: TrialContext, builder: CandidateBuilder | None = None) -> None:
        self.ctx = ctx
        self.builder = builder or CandidateBuilder(ctx)
        # the output-fidelity floor is known only after fine-tuning: set by end_trial
        self.budgets = _budgets(ctx.budgets)
        self.wanted = tuple(dict.fromkeys([b.figure for b in self.budgets] +
                                          list(ctx.space.objectives[1:])))
        self._local = threading.local()  # one trial per thread (a pool runs several)
        self._built: dict[Candidate, tuple[float, int]] = {}  # size MB, multiply-accumulates

    # --- the engine's contract -------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        return suggest(trial, self.ctx.space, self.ctx.shape)  # type: ignore[arg-type]

    def describe(self, candidate: Hashable) -> dict:
        assert isinstance(candidate, Candidate)
        return candidate.to_dict()

    def distributions(self) -> dict[str, Any]:
        return distributions(self.ctx.space, self.ctx.shape)

    def budgets_for(self, pool: str | None) -> tuple[Budget, ...]:
        """The budgets of the first device of that pool (the search's first device if none)."""
        names = [d.name for d in self.ctx.devices.devices if d.pool == pool]
        budgets = (self.ctx.device_budgets or {}).get(names[0]) if names else None
        return _budgets(budgets or self.ctx.budgets)

    def static_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """The exported bytes' size: pruned, quantized and exported here, never measured."""
        size_mb, _macs = self._build(candidate)
        return {name: size_mb for name in _STATIC}

    def proxies(self, candidate: Hashable) -> Mapping[str, float]:
        """Multiply-accumulates of the pruned network: where the budgets leave the size fixed
        (the frontier), the candidate that computes more on the same bytes (keeps the
        high-resolution early layers wider) tends to be the more accurate."""
        return {"log_macs": float(torch.log(torch.tensor(float(self._build(candidate)[1]))))}

    def ladders(self) -> list[list[dict[str, Any]]]:
        """Uniform models: each knob says what "cheaper" means for it (hwnas/space.py)."""
        return uniform_ladders(self.ctx.space, self.ctx.shape)

    def _build(self, candidate: Hashable) -> tuple[float, int]:
        assert isinstance(candidate, Candidate)
        if candidate not in self._built:
            with tempfile.TemporaryDirectory(prefix="hwnas-static-") as work:
                pruned, _exported, artifact = self.builder.screen_copy(
                    candidate, Path(work), Timings())
            image = torch.as_tensor(self.builder.calibration[:1])
            self._built[candidate] = (artifact.size_mb,
                                      multiply_accumulates(pruned.module.eval(), image))
        return self._built[candidate]

    def open_trial(self, trial: optuna.Trial) -> str | None:
        """Lease a device (any of the pool's free ones): the engine proposes for its pool."""
        self.close_trial(trial)
        # a retry of a trial whose controller died carries what that one had measured
        inherited = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING") \
            if trial.user_attrs.get("candidate") is not None else None
        # other controllers' dead trials are retried now, not after a heartbeat grace period
        fail_abandoned_trials(trial.study)
        lease = DeviceLease(self.ctx.devices)
        progress = Progress(trial, TrialOutcome(
            TrialStage.RUNNING, config_version=self.ctx.config_version, origin=trial.number,
            controller=controller_id(), device=lease.device.name, device_pool=lease.device.pool))
        self._local.now = _Trial(trial, None, progress, TrialMeasurer(lease, Timings(), progress),
                                 self.ctx.run.work_dir(trial.number), inherited)
        return lease.device.pool

    def start_trial(self, trial: optuna.Trial, candidate: Hashable) -> None:
        assert isinstance(candidate, Candidate)
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
            {d.pool for d in self.ctx.devices.alive}
        return finished_twin(trial, pools, now.progress)

    def accelerator_screen(self, candidate: Hashable) -> AcceleratorVerdict | None:
        """Which nodes the device's accelerator refuses, on the pruned, quantized copy."""
        now = self._current(candidate)
        if not needs_screening(now.measurer.lease.device.profile):
            return None
        self._screen_copy(now)
        assert now.screen is not None and now.exported is not None
        compatibility = now.measurer.screen(now.screen, now.exported, now.candidate)
        if compatibility.compatible:
            return AcceleratorVerdict(True)
        now.progress.update(stage=TrialStage.REJECTED, artifact=now.screen,
                            screen_measurement=compatibility.measurement,
                            rejection=compatibility.reason())
        return AcceleratorVerdict(False, compatibility.reason(),
                                  {"model_size_mb": now.screen.size_mb})

    def measure(self, candidate: Hashable, rounds: int | None = None) -> HardwareReport:
        now = self._current(candidate)
        if now.artifact is not None:  # the deployed bytes
            now.measurement = now.measurer.measure(now.artifact, rounds)
            now.progress.update(measurement=now.measurement)
            return now.report(self._figures(now.measurement, now.artifact), now.measurement)
        self._screen_copy(now)
        assert now.screen is not None
        now.screen_measurement = now.measurer.measure(now.screen, rounds)
        refuse_emulated_latency(self.ctx.space, self.ctx.budgets_for(now.screen_measurement),
                                now.screen_measurement)
        now.progress.update(screen_measurement=now.screen_measurement)
        return now.report(self._figures(now.screen_measurement, now.screen),
                          now.screen_measurement)

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

    def evaluate(self, candidate: Hashable, fidelity: float) -> float:
        now = self._current(candidate)
        self._screen_copy(now)  # evaluated without screening: pruned here
        assert now.pruned is not None
        now.artifact, accuracy_val, now.fidelity = train_and_evaluate(
            self.ctx, self.builder, now.trial, now.progress, now.pruned,
            now.measurer.lease.device.profile, now.work, now.measurer.timings, fidelity)
        return accuracy_val

    def end_trial(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                  earlier: optuna.trial.FrozenTrial | None = None) -> None:
        now = self._current(candidate)
        if stage == STAGE_DUPLICATE and earlier is not None:
            reuse(trial, earlier, self.ctx.config_version)
            now.copied = True
            return
        changes: dict = {"stage": TrialStage(stage)}
        if stage == TrialStage.REJECTED.value and now.screen_measurement is not None:
            assert now.screen is not None
            changes.update(artifact=now.screen, measurement=now.screen_measurement,
                           rejection=describe_excess(constraint_values(
                               self.ctx.budgets_for(now.screen_measurement),
                               now.screen_measurement, now.screen)))
        if stage == TrialStage.EVALUATED.value and now.fidelity is not None:
            assert now.measurement is not None and now.artifact is not None
            budgets = self.ctx.budgets_for(now.measurement)
            if budgets.fidelity_cosine_min is not None:
                trial.set_constraint("fidelity_cosine_min", constraint_values(
                    budgets, now.measurement, now.artifact, now.fidelity)["fidelity_cosine_min"])
        now.progress.update(**changes)

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
            return not self.ctx.devices.alive
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

    # --- the trial's lifetime ----------------------------------------------------------

    def _now(self) -> _Trial:
        now = getattr(self._local, "now", None)
        if now is None:
            raise RuntimeError("the pipeline called the evaluator outside a trial it opened")
        return now

    def _current(self, candidate: Hashable) -> _Trial:
        now = self._now()
        if now.candidate != candidate:
            raise RuntimeError("the pipeline called the evaluator outside the trial it started")
        return now

    def _screen_copy(self, now: _Trial) -> None:
        """The candidate pruned and quantized before fine-tuning, built once per trial."""
        if now.screen is None:
            assert now.candidate is not None
            now.pruned, now.exported, now.screen = self.builder.screen_copy(
                now.candidate, now.work, now.measurer.timings)

    def _figures(self, measurement: Measurement, artifact: Artifact) -> HardwareReport:
        return compression_figures(measurement, artifact,
                                   self.ctx.budgets_for(measurement).basis, self.wanted)
