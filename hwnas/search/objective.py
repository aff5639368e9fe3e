"""One trial: suggest -> prune -> (screen latency) -> fine-tune -> export -> evaluate -> measure.

Cheap checks come first: the pruned, quantized candidate is measured before any
fine-tuning, and a candidate that already breaks the latency or size budget is recorded
as rejected without spending minutes on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import optuna
import torch
from torch import nn

from hwnas.compress.finetune import finetune
from hwnas.compress.prune import prune_model
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace
from hwnas.data import TaskData
from hwnas.evaluate import onnx_accuracy
from hwnas.export.onnx import build_onnx, precision_units
from hwnas.models import model_stages, output_channels, output_layers
from hwnas.budgets import breaks_a_budget, constraint_values, describe_excess
from hwnas.errors import DeviceError
from hwnas.records import Artifact, Candidate, FineTuneReport, Measurement, TrialOutcome, TrialStage
from hwnas.remote.pool import Device, DevicePool
from hwnas.run import RunFolder
from hwnas.space import SpaceShape, suggest

# a rejected candidate was never evaluated: this stands in for its accuracy so that the
# sampler sees it as bad; reports show it as "not evaluated", never as a real accuracy
NOT_EVALUATED = 0.0


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


def objective_values(space: SearchSpace, accuracy: float, measurement: Measurement,
                     artifact: Artifact) -> tuple[float, ...]:
    metrics = {"accuracy": accuracy, "latency_p90_ms": measurement.latency_ms_p90,
               "latency_p50_ms": measurement.latency_ms_p50, "model_size_mb": artifact.size_mb}
    return tuple(metrics[name] for name in space.objectives)


class CandidateBuilder:
    """Prune and export candidates of one base model; shared by the search and benchmarks."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.stages = model_stages(ctx.base_model, ctx.space.base_model)
        self.ignored = output_layers(ctx.base_model, ctx.task.num_classes)
        self.example = torch.zeros((1, *ctx.task.input_shape))
        saliency_batches = ctx.space.knobs.pruning.saliency_batches if ctx.space.knobs.pruning else 4
        x, y = ctx.task.calibration_labels(64 * saliency_batches, seed=ctx.space.search.seed)
        self.saliency_batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
        self.calibration = ctx.task.calibration(ctx.space.dataset.calibration_samples,
                                                seed=ctx.space.search.seed + 1)

    def prune(self, candidate: Candidate) -> nn.Module:
        return prune_model(self.ctx.base_model, candidate, self.stages, self.example, self.ignored,
                           self.ctx.device.channel_multiple, self.saliency_batches)

    def export(self, model: nn.Module, candidate: Candidate, path: Path) -> Artifact:
        granularity = (self.ctx.space.knobs.precision.granularity
                       if self.ctx.space.knobs.precision else "stage")
        units = precision_units(model, model_stages(model, self.ctx.space.base_model), granularity)
        build_onnx(model, self.ctx.task.input_shape, dict(candidate.precision_plan), units,
                   self.calibration, path)
        return Artifact.from_file(path, output_channels(model),
                                  sum(p.numel() for p in model.parameters()))

    def measure(self, artifact: Artifact, timings: Timings, lease: "DeviceLease") -> Measurement:
        """Measure on the leased device; if it is lost, on another device of its pool."""
        while True:
            device = lease.device
            try:
                with timings.phase("ship"):
                    device.client.ensure_model(artifact)
                with timings.phase("measure"):
                    return device.client.measure(device.profile.measure_request(artifact.sha256))
            except DeviceError:
                # the transport already reconnected and retried with back-off: it is gone
                lease.replace()


class DeviceLease:
    """The device a trial holds; replaced by another of its pool if it is lost."""

    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool
        self.device: Device = pool.acquire()
        self.lost: list[str] = []

    def replace(self) -> None:
        self.lost.append(self.device.name)
        self.pool.mark_down(self.device)
        self.device = self.pool.acquire(self.device.pool)

    def release(self) -> None:
        self.pool.release(self.device)


class Objective:
    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.builder = CandidateBuilder(ctx)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        ctx, timings = self.ctx, Timings()
        candidate = suggest(trial, ctx.space, ctx.shape)
        progress = Progress(TrialOutcome(TrialStage.RUNNING, candidate=candidate,
                                         config_version=ctx.config_version))
        progress.outcome.write(trial)
        work = ctx.run.work_dir(trial.number)
        try:
            lease = DeviceLease(ctx.devices)
        except DeviceError:
            trial.study.stop()
            raise
        try:
            return self._run(trial, progress, timings, work, lease)
        except DeviceError as exc:
            progress.failed(exc)
            # no device of its pool is left: try this candidate again when the search resumes
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            if not ctx.devices.alive:
                trial.study.stop()
            raise
        except Exception as exc:
            progress.failed(exc)
            raise
        finally:
            dataclasses.replace(progress.outcome, timings_s=tuple(timings.seconds.items()),
                                device=lease.device.name,
                                devices_lost=tuple(lease.lost)).write(trial)
            lease.release()
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, trial: optuna.Trial, progress: "Progress", timings: Timings, work: Path,
             lease: DeviceLease) -> tuple[float, ...]:
        ctx, builder = self.ctx, self.builder
        candidate = progress.outcome.candidate
        assert candidate is not None
        with timings.phase("prune"):
            model = builder.prune(candidate)
        with timings.phase("quantize_export"):
            screen = builder.export(model, candidate, work / "screen.onnx")
        screen_measurement = builder.measure(screen, timings, lease)
        progress.update(screen_measurement=screen_measurement)
        screen_constraints = constraint_values(ctx.budgets, screen_measurement, screen)
        if breaks_a_budget(screen_constraints):
            # structure and precision fix latency and size; fine-tuning cannot rescue them
            for key, value in screen_constraints.items():
                trial.set_constraint(key, value)
            progress.update(stage=TrialStage.REJECTED, artifact=screen,
                            measurement=screen_measurement,
                            rejection=describe_excess(screen_constraints))
            return objective_values(ctx.space, NOT_EVALUATED, screen_measurement, screen)

        with timings.phase("finetune"):
            tune = finetune(model, ctx.base_model, ctx.task, ctx.space.finetune,
                            seed=ctx.space.search.seed + trial.number)
        progress.update(finetune=FineTuneReport.from_dict(tune))
        with timings.phase("quantize_export"):
            artifact = ctx.run.keep_artifact(builder.export(model, candidate, work / "model.onnx"))
        with timings.phase("evaluate"):
            accuracy_val = onnx_accuracy(artifact, ctx.task.val_x, ctx.task.val_y)
            accuracy_test = onnx_accuracy(artifact, ctx.task.test_x, ctx.task.test_y)
        progress.update(artifact=artifact, accuracy_val=accuracy_val, accuracy_test=accuracy_test)
        # the deployed bytes are what gets reported: measure them, not the screening copy
        measurement = builder.measure(artifact, timings, lease)
        for key, value in constraint_values(ctx.budgets, measurement, artifact).items():
            trial.set_constraint(key, value)
        progress.update(stage=TrialStage.EVALUATED, measurement=measurement)
        return objective_values(ctx.space, accuracy_val, measurement, artifact)


@dataclasses.dataclass
class Progress:
    """A trial's outcome as far as it got: what a failure still records."""

    outcome: TrialOutcome

    def update(self, **changes: object) -> None:
        self.outcome = dataclasses.replace(self.outcome, **changes)  # type: ignore[arg-type]

    def failed(self, exc: BaseException) -> None:
        self.update(stage=TrialStage.FAILED, failure=failure(exc))


def failure(exc: BaseException) -> str:
    """What a failed trial stores: the error's class and message."""
    return f"{type(exc).__name__}: {exc}"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
