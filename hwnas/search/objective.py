"""One trial: suggest -> prune -> (screen: accelerator compatibility, latency) -> fine-tune ->
export -> evaluate (accuracy, output fidelity) -> measure.

Cheap checks come first: the pruned, quantized candidate is measured before any
fine-tuning, and a candidate that already breaks the latency or size budget, or that the
device's accelerator cannot run whole, is recorded as rejected without spending minutes on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from hwnas.compress.finetune import finetune
from hwnas.compress.prune import PrunedModel, prune, pruning_setup
from hwnas.models.saved import plan_document, save_pruned
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace
from hwnas.data import TaskData
from hwnas.evaluate import FIDELITY_SAMPLES, onnx_split_accuracy, output_fidelity
from hwnas.export.onnx import ExportedModel, build_onnx, precision_units
from hwnas.export.precision import ExportStyle
from hwnas.models import model_stages, output_channels
from hwnas import metrics
from hwnas.budgets import (NOT_EVALUATED, breaks_a_budget, constraint_values, describe_excess,
                           latency_uses, objective_values)
from hwnas.disk import no_space
from hwnas.errors import DeviceError, JobInterrupted, MeasurementError
from hwnas.records import (Artifact, Candidate, FineTuneReport, Measurement, OutputFidelity,
                           TrialOutcome, TrialStage)
from hwnas.remote.pool import Device, DevicePool
from hwnas.remote.screen import CompatibilityScreen, needs_screening, screen_compatibility
from hwnas.run import RunFolder
from hwnas.search.controllers import controller_id, fail_abandoned_trials
from hwnas.space import SpaceShape, suggest

@dataclasses.dataclass
class Timings:
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class TrialContext:
    space: SearchSpace
    device: DeviceProfile
    budgets: Budgets
    task: TaskData
    base_model: nn.Module
    shape: SpaceShape
    devices: DevicePool
    run: RunFolder
    config_version: str | None = None
    device_budgets: dict[str, Budgets] | None = None  # device name -> its budgets

    def budgets_for(self, measurement: Measurement) -> Budgets:
        """A figure is judged by the budgets of the device that measured it."""
        return (self.device_budgets or {}).get(measurement.device, self.budgets)


class CandidateBuilder:
    """Prune and export candidates of one base model; shared by the search and benchmarks."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.pruning = pruning_setup(ctx.base_model, ctx.space.base_model.stages or {}, ctx.space,
                                     ctx.task.input_shape, ctx.task.num_classes,
                                     ctx.device.channel_multiple)
        saliency_batches = ctx.space.knobs.pruning.saliency_batches if ctx.space.knobs.pruning else 4
        x, y = ctx.task.calibration_labels(64 * saliency_batches, seed=ctx.space.search.seed)
        self.saliency_batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
        self.calibration = ctx.task.calibration(ctx.space.dataset.calibration_samples,
                                                seed=ctx.space.search.seed + 1)

    def prune(self, candidate: Candidate) -> nn.Module:
        return self.prune_with_plan(candidate).module

    def prune_with_plan(self, candidate: Candidate) -> PrunedModel:
        """The pruned model and the channel plan that rebuilds it from the base model."""
        return prune(self.pruning, candidate, self.saliency_batches)

    def screen_copy(self, candidate: Candidate, work: Path, timings: Timings
                    ) -> tuple[PrunedModel, ExportedModel, Artifact]:
        """The candidate pruned and quantized, before fine-tuning: what screening measures."""
        with timings.phase("prune"):
            pruned = self.prune_with_plan(candidate)
        with timings.phase("quantize_export"):
            exported = self.build(pruned.module, candidate, work / "screen.onnx")
            return pruned, exported, self.artifact(pruned.module, exported)

    def keep_pytorch(self, pruned: PrunedModel, artifact: Artifact, trial: optuna.Trial,
                     work: Path) -> None:
        """The fine-tuned PyTorch model beside the deployed bytes: state_dict + channel plan."""
        ctx = self.ctx
        plan = plan_document(ctx.space.base_model, ctx.task.input_shape, ctx.task.num_classes,
                             pruned.plan())
        state, plan_path = work / f"{artifact.sha256}.pt", work / f"{artifact.sha256}.plan.json"
        save_pruned(pruned.module, plan, state, plan_path)
        ctx.run.keep_pytorch(artifact.sha256, state, plan_path, trial)

    def base_candidate(self) -> Candidate:
        """The unpruned base model at fp32: the reference the search is read against."""
        shape = self.ctx.shape
        return Candidate.build({s: 1.0 for s in shape.stages}, "l1", 0.0,
                               {u: "fp32" for u in shape.precision_units})

    def build(self, model: nn.Module, candidate: Candidate, path: Path) -> ExportedModel:
        """The candidate's bytes, with its plan written as the device's profile wants it."""
        granularity = (self.ctx.space.knobs.precision.granularity
                       if self.ctx.space.knobs.precision else "stage")
        units = precision_units(model, model_stages(model, self.ctx.space.base_model), granularity)
        spec = self.ctx.device.export
        return build_onnx(model, self.ctx.task.input_shape, dict(candidate.precision_plan), units,
                          self.calibration, path, candidate.calibration_method,
                          ExportStyle(spec.io_precision, spec.int8_activations))

    def artifact(self, model: nn.Module, exported: ExportedModel) -> Artifact:
        return Artifact.from_file(exported.path, output_channels(model),
                                  sum(p.numel() for p in model.parameters()))

    def export(self, model: nn.Module, candidate: Candidate, path: Path) -> Artifact:
        return self.artifact(model, self.build(model, candidate, path))

    def export_parent(self, model: nn.Module, path: Path) -> Artifact:
        """The same model without a precision plan (float32 throughout, float32 inputs and
        outputs): the reference a candidate's output fidelity is taken against."""
        return self.artifact(model, build_onnx(model, self.ctx.task.input_shape, {}, {},
                                               self.calibration, path))


#: jobs of one measurement an agent may interrupt (stopping or restarting) before its device
#: is treated as lost
MAX_INTERRUPTED_JOBS = 2


class DeviceLease:
    """The device a trial holds; replaced by another of its pool if it is lost."""

    def __init__(self, pool: DevicePool, device_pool: str | None = None) -> None:
        self.pool = pool
        self.device: Device = pool.acquire(device_pool)  # any device, or one of that pool
        self.lost: list[str] = []

    def replace(self) -> None:
        self.lost.append(self.device.name)
        self.pool.mark_down(self.device)
        self.device = self.pool.acquire(self.device.pool)

    def release(self) -> None:
        self.pool.release(self.device)


class TrialMeasurer:
    """Measures a trial's artifacts on its leased device (on another of its pool if the device
    is lost). A trial retried after its controller died measures nothing twice: bytes its
    predecessor measured are reused, and a job it left on the agent is collected."""

    def __init__(self, lease: DeviceLease, timings: Timings, progress: "Progress | None" = None,
                 inherited: TrialOutcome | None = None) -> None:
        self.lease, self.timings, self.progress = lease, timings, progress
        self.known = {m.model_sha256: m for m in (inherited.screen_measurement, inherited.measurement)
                      if m is not None} if inherited else {}
        self.known_pool = inherited.device_pool if inherited else None
        self.pending = inherited.pending_job if inherited else None
        self.reused: list[str] = []

    def measure(self, artifact: Artifact, rounds: int | None = None) -> Measurement:
        """``rounds``: more measurement rounds than the profile's (a figure whose interval
        holds its budget is measured again with more; search/screening.py)."""
        interrupted = 0
        while True:
            device = self.lease.device
            known = self.known.get(artifact.sha256) if rounds is None else None
            # measured on a device of this one's pool (interchangeable ones): not again
            if known is not None and device.pool in (self.known_pool, known.device):
                self.reused.append(artifact.sha256)
                return known
            try:
                with self.timings.phase("ship"):
                    device.client.ensure_model(artifact)
                with self.timings.phase("measure"):
                    request = device.profile.measure_request(artifact.sha256)
                    if rounds is not None:
                        request = dataclasses.replace(request, rounds=rounds)
                    measurement = self._collect_pending(device, artifact) or device.client.measure(
                        request,
                        on_submitted=lambda job: self._note(device.name, job, artifact.sha256))
                self._note(None)
                return measurement
            except JobInterrupted:
                # the agent stopped during the job: measure again; an agent that is back
                # measures it, one that is gone raises DeviceError on the next call
                self._note(None)
                interrupted += 1
                if interrupted > MAX_INTERRUPTED_JOBS:
                    self.lease.replace()
                    interrupted = 0
            except DeviceError:
                # the transport already reconnected and retried with back-off: it is gone
                self.lease.replace()

    def screen(self, artifact: Artifact, exported: ExportedModel,
               candidate: Candidate) -> CompatibilityScreen:
        """Which nodes the device's accelerator refuses (on another of its pool if it is lost)."""
        while True:
            device = self.lease.device
            try:
                with self.timings.phase("compatibility"):
                    return screen_compatibility(device.client, device.profile, artifact,
                                                exported, dict(candidate.precision_plan))
            except DeviceError:
                self.lease.replace()

    def _collect_pending(self, device: Device, artifact: Artifact) -> Measurement | None:
        pending, self.pending = self.pending, None
        if pending is None or tuple(pending[::2]) != (device.name, artifact.sha256):
            return None
        try:
            measurement = device.client.collect(pending[1], device.profile.measurement.timeout_s)
        except (MeasurementError, DeviceError):  # interrupted, failed or forgotten: measure anew
            return None
        self.reused.append(artifact.sha256)
        return measurement

    def _note(self, device: str | None, job: str = "", sha256: str = "") -> None:
        if self.progress is not None:
            self.progress.update(pending_job=(device, job, sha256) if device else None)


class Objective:
    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.builder = CandidateBuilder(ctx)
        self.out_of_space: BaseException | None = None  # the error that stopped the study

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        ctx, timings = self.ctx, Timings()
        candidate = suggest(trial, ctx.space, ctx.shape)
        # a retry of a trial whose controller died inherits its attributes: what it measured
        inherited = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING") \
            if trial.user_attrs.get("candidate") == candidate.to_dict() else None
        origin = inherited.origin if inherited and inherited.origin is not None else trial.number
        progress = Progress(trial, TrialOutcome(
            TrialStage.RUNNING, candidate=candidate, config_version=ctx.config_version,
            origin=origin, controller=controller_id()))
        # other controllers' dead trials are retried now, not after a heartbeat grace period
        fail_abandoned_trials(trial.study)
        twin = finished_twin(trial, {d.pool for d in ctx.devices.alive}, progress)
        if twin is not None:  # this very candidate was measured already: never twice
            return reuse(trial, twin, ctx.config_version)
        work = ctx.run.work_dir(trial.number)
        try:
            lease = DeviceLease(ctx.devices)
        except DeviceError:
            trial.study.stop()
            raise
        progress.update(device=lease.device.name, device_pool=lease.device.pool)
        measurer = TrialMeasurer(lease, timings, progress, inherited)
        try:
            return self._run(trial, progress, measurer, work)
        except DeviceError as exc:
            progress.failed(exc)
            # no device of its pool is left: try this candidate again when the search resumes
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            if not ctx.devices.alive:
                trial.study.stop()
            raise
        except Exception as exc:
            if no_space(exc) is not None:
                # a full disk fails every trial after this one: stop the study (its finished
                # trials are kept) and try this candidate again when the search resumes
                self.out_of_space = exc
                trial.study.stop()
            progress.failed(exc)
            if self.out_of_space is exc:
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            raise
        finally:
            progress.update(timings_s=tuple(timings.seconds.items()), device=lease.device.name,
                            device_pool=lease.device.pool, devices_lost=tuple(lease.lost))
            lease.release()
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, trial: optuna.Trial, progress: "Progress", measurer: TrialMeasurer,
             work: Path) -> tuple[float, ...]:
        ctx, builder, timings = self.ctx, self.builder, measurer.timings
        candidate = progress.outcome.candidate
        assert candidate is not None and progress.outcome.origin is not None
        pruned, screen_export, screen = builder.screen_copy(candidate, work, timings)
        if needs_screening(measurer.lease.device.profile):
            compatibility = measurer.screen(screen, screen_export, candidate)
            # one constraint per name on every screened trial: <= 0 runs whole on the accelerator
            trial.set_constraint("accelerator_compatible", 0.0 if compatibility.compatible else 1.0)
            if not compatibility.compatible:
                progress.update(stage=TrialStage.REJECTED, artifact=screen,
                                screen_measurement=compatibility.measurement,
                                rejection=compatibility.reason())
                return rejected_values(ctx.space, screen)
        screen_measurement = measurer.measure(screen)
        refuse_emulated_latency(ctx.space, ctx.budgets_for(screen_measurement), screen_measurement)
        progress.update(screen_measurement=screen_measurement)
        budgets = ctx.budgets_for(screen_measurement)
        screen_constraints = constraint_values(budgets, screen_measurement, screen)
        if breaks_a_budget(screen_constraints):
            # structure and precision fix latency and size; fine-tuning cannot rescue them
            for key, value in screen_constraints.items():
                trial.set_constraint(key, value)
            progress.update(stage=TrialStage.REJECTED, artifact=screen,
                            measurement=screen_measurement,
                            rejection=describe_excess(screen_constraints))
            return objective_values(ctx.space, NOT_EVALUATED, screen_measurement, screen,
                                    budgets.basis)

        artifact, accuracy_val, fidelity = train_and_evaluate(
            ctx, builder, trial, progress, pruned, measurer.lease.device.profile, work, timings)
        # the deployed bytes are what gets reported: measure them, not the screening copy
        measurement = measurer.measure(artifact)
        budgets = ctx.budgets_for(measurement)
        for key, value in constraint_values(budgets, measurement, artifact, fidelity).items():
            trial.set_constraint(key, value)
        progress.update(stage=TrialStage.EVALUATED, measurement=measurement)
        return objective_values(ctx.space, accuracy_val, measurement, artifact, budgets.basis)


def train_and_evaluate(ctx: TrialContext, builder: CandidateBuilder, trial: optuna.Trial,
                       progress: "Progress", pruned: PrunedModel, device: DeviceProfile,
                       work: Path, timings: Timings, fidelity: float = 1.0
                       ) -> tuple[Artifact, float, OutputFidelity]:
    """Fine-tune a pruned candidate (``fidelity``: the fraction of the space's fine-tuning
    budget), export and keep its deployed bytes and PyTorch weights, and evaluate them:
    validation and test accuracy of the bytes, output fidelity against the same model's fp32
    export. Every result is written to the trial as it comes."""
    candidate, model = progress.outcome.candidate, pruned.module
    assert candidate is not None and progress.outcome.origin is not None
    settings = ctx.space.finetune
    if fidelity != 1.0:
        settings = settings.model_copy(update={
            "max_steps": max(1, round(settings.max_steps * fidelity)),
            "max_seconds": settings.max_seconds * fidelity})
    with timings.phase("finetune"):
        tune = finetune(model, ctx.base_model, ctx.task, settings,
                        seed=candidate.finetune_seed(ctx.space.search.seed))
    progress.update(finetune=FineTuneReport.from_dict(tune))
    with timings.phase("quantize_export"):
        artifact = builder.export(model, candidate, work / "model.onnx")
        ctx.run.keep_artifact(artifact, trial)
        parent = builder.export_parent(model, work / "parent.onnx")
        builder.keep_pytorch(pruned, artifact, trial, work)
    with timings.phase("evaluate"):
        accuracy_val = onnx_split_accuracy(artifact, ctx.task.validation)
        accuracy_test = onnx_split_accuracy(artifact, ctx.task.test)
    progress.update(artifact=artifact, accuracy_val=accuracy_val, accuracy_test=accuracy_test)
    with timings.phase("fidelity"):
        held_out = ctx.task.validation
        samples = held_out.load(np.arange(min(FIDELITY_SAMPLES, len(held_out))))
        output = output_fidelity(parent, artifact, samples, device)
    progress.update(output_fidelity=output)
    return artifact, accuracy_val, output


def rejected_values(space: SearchSpace, artifact: Artifact) -> tuple[float, ...]:
    """Objective values for a candidate the accelerator refused: never evaluated, and never
    measured on the accelerator: the worst the sampler can see, but for its size."""
    return (NOT_EVALUATED, *(artifact.size_mb if name == "model_size_mb"
                             else -math.inf if metrics.get(name).higher_is_better else math.inf
                             for name in space.objectives[1:]))


def refuse_emulated_latency(space: SearchSpace, budgets: Budgets, measurement: Measurement) -> None:
    """A simulator's latency must never stand for the device's: no objective, no budget."""
    uses = latency_uses(space.objectives, budgets) if measurement.emulated else []
    if uses:
        why = (measurement.agent_report.get("runtime") or {}).get("emulation")
        raise MeasurementError(
            f"{measurement.device} simulates its accelerator ({why}); its latency cannot be used "
            f"for {', '.join(uses)}: search it with objectives [accuracy, model_size_mb] and "
            f"size/fidelity budgets")
def measure_base_model(ctx: TrialContext, builder: CandidateBuilder) -> tuple[Artifact, Measurement]:
    """The unpruned fp32 base model's bytes and their measurement on a device of the pool."""
    lease = DeviceLease(ctx.devices)
    try:
        work = ctx.run.path / "work" / "base-model"
        artifact = builder.export(ctx.base_model, builder.base_candidate(), work / "base.onnx")
        return artifact, TrialMeasurer(lease, Timings()).measure(artifact)
    finally:
        lease.release()
        shutil.rmtree(work, ignore_errors=True)


class Progress:
    """A trial's outcome as far as it got, written to the study at every step: a failure, or
    a controller killed mid-trial, still leaves what was found."""

    def __init__(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        self.trial = trial
        self.outcome = outcome
        outcome.write(trial)

    def update(self, **changes: object) -> None:
        self.outcome = dataclasses.replace(self.outcome, **changes)  # type: ignore[arg-type]
        self.outcome.write(self.trial)

    def failed(self, exc: BaseException) -> None:
        self.update(stage=TrialStage.FAILED, failure=failure(exc))


TWIN_WAIT_S = 3600.0


MEASURES, WAITS = "measures", "waits"


def finished_twin(trial: optuna.Trial, pools: set[str], progress: "Progress | None" = None,
                  poll_s: float = 2.0) -> optuna.trial.FrozenTrial | None:
    """A finished trial of the same candidate (same parameters) on a device of one of these
    pools, waiting for one that another controller runs; None if this trial is to measure it.

    Trials proposing one candidate at once agree on one to measure it. A trial's parameters
    are in the study before it looks (suggest writes them), so of two twins at least one sees
    the other. A trial waits if it sees a lower-numbered running twin or one that measures;
    otherwise it lets higher-numbered twins that have not decided yet decide (they never wait
    for a decision themselves), and then measures. Its role is recorded for the others. If the
    one that measures fails, the waiting ones decide again."""
    deadline = time.monotonic() + TWIN_WAIT_S
    role = None
    while True:
        twins = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number != trial.number and t.params == trial.params
                 and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
                 and _twin_of_pools(TrialOutcome.from_trial(t), pools)]
        done = [t for t in twins if t.state == TrialState.COMPLETE]
        if done:  # the trial that measured it, rather than another copy of it
            return min(done, key=lambda t: (TrialOutcome.from_trial(t).copied_from is not None,
                                            t.number))
        running = {t.number: TrialOutcome.from_trial(t).twin_role for t in twins
                   if t.state == TrialState.RUNNING}
        if time.monotonic() > deadline or not running:
            decision = MEASURES
        elif any(n < trial.number for n in running) or MEASURES in running.values():
            decision = WAITS
        elif None in running.values():
            decision = None  # higher-numbered twins are deciding now
        else:
            decision = MEASURES  # every twin waits: this one measures
        if decision is not None and decision != role and progress is not None:
            progress.update(twin_role=decision)
        role = decision or role
        if decision == MEASURES:
            return None
        time.sleep(poll_s if decision == WAITS else min(poll_s, 0.2))
        fail_abandoned_trials(trial.study)  # a twin whose controller died will not finish


def _twin_of_pools(outcome: TrialOutcome, pools: set[str]) -> bool:
    """A search trial measured on a device of these pools (a finalized model is a longer
    fine-tune of its candidate, not a twin)."""
    return outcome.finalized_from is None and outcome.device_pool in pools | {None}


def reuse(trial: optuna.Trial, twin: optuna.trial.FrozenTrial,
          config_version: str | None) -> tuple[float, ...]:
    """Record the twin's outcome as this trial's (marked as a copy) instead of measuring."""
    outcome = TrialOutcome.from_trial(twin)
    dataclasses.replace(outcome, copied_from=f"{trial.study.study_name}#{twin.number}",
                        controller=controller_id(), pending_job=None, twin_role=WAITS,
                        config_version=outcome.config_version or config_version).write(trial)
    for key, value in twin.constraints.items():
        trial.set_constraint(key, value)
    return tuple(twin.values)


def failure(exc: BaseException) -> str:
    """What a failed trial stores: the error's class and message."""
    return f"{type(exc).__name__}: {exc}"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
