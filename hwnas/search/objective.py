"""One trial: suggest -> prune -> (screen latency) -> fine-tune -> export -> evaluate -> measure.

Cheap checks come first: the pruned, quantized candidate is measured before any
fine-tuning, and a candidate that already breaks the latency or size budget is recorded
as rejected without spending minutes on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
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
from hwnas.records import Artifact, Candidate, Measurement
from hwnas.errors import DeviceError
from hwnas.remote.pool import Device, DevicePool
from hwnas.space import SpaceShape, suggest

STAGE_REJECTED = "rejected_before_finetune"
STAGE_EVALUATED = "evaluated"
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
    run_dir: Path


def constraint_values(budgets: Budgets, latency_p90_ms: float, size_mb: float) -> dict[str, float]:
    """Optuna convention: <= 0 is feasible. Relative excess, so both budgets weigh alike."""
    values = {}
    if budgets.latency_p90_ms is not None:
        values["latency_p90_ms"] = latency_p90_ms / budgets.latency_p90_ms - 1.0
    if budgets.model_size_mb is not None:
        values["model_size_mb"] = size_mb / budgets.model_size_mb - 1.0
    return values


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


def keep_artifact(artifact: Artifact, run_dir: Path) -> Artifact:
    """Store the bytes content-addressed in the run folder: what export hands out later."""
    target = run_dir / "artifacts" / f"{artifact.sha256}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        # unique per writer: trials on several devices run in threads
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        shutil.copyfile(artifact.path, tmp)
        tmp.replace(target)
    return dataclasses.replace(artifact, path=str(target))


class Objective:
    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.builder = CandidateBuilder(ctx)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        ctx, timings = self.ctx, Timings()
        candidate = suggest(trial, ctx.space, ctx.shape)
        trial.set_user_attr("candidate", candidate.to_dict())
        work = ctx.run_dir / "work" / f"trial-{trial.number}"
        try:
            lease = DeviceLease(ctx.devices)
        except DeviceError:
            trial.study.stop()
            raise
        try:
            return self._run(trial, candidate, timings, work, lease)
        except DeviceError:
            # no device of its pool is left: try this candidate again when the search resumes
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            if not ctx.devices.alive:
                trial.study.stop()
            raise
        finally:
            trial.set_user_attr("timings_s", timings.seconds)
            trial.set_user_attr("device", lease.device.name)
            if lease.lost:
                trial.set_user_attr("devices_lost", lease.lost)
            lease.release()
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, trial: optuna.Trial, candidate: Candidate, timings: Timings,
             work: Path, lease: DeviceLease) -> tuple[float, ...]:
        ctx, builder = self.ctx, self.builder
        with timings.phase("prune"):
            model = builder.prune(candidate)
        with timings.phase("quantize_export"):
            screen = builder.export(model, candidate, work / "screen.onnx")
        screen_measurement = builder.measure(screen, timings, lease)
        trial.set_user_attr("screen_measurement", screen_measurement.to_dict())
        screen_constraints = constraint_values(ctx.budgets, screen_measurement.latency_ms_p90,
                                               screen.size_mb)
        if any(value > 0 for value in screen_constraints.values()):
            # structure and precision fix latency and size; fine-tuning cannot rescue them
            for key, value in screen_constraints.items():
                trial.set_constraint(key, value)
            trial.set_user_attr("stage", STAGE_REJECTED)
            trial.set_user_attr("artifact", screen.to_dict())
            trial.set_user_attr("measurement", screen_measurement.to_dict())
            return objective_values(ctx.space, NOT_EVALUATED, screen_measurement, screen)

        with timings.phase("finetune"):
            tune = finetune(model, ctx.base_model, ctx.task, ctx.space.finetune,
                            seed=ctx.space.search.seed + trial.number)
        with timings.phase("quantize_export"):
            artifact = keep_artifact(builder.export(model, candidate, work / "model.onnx"),
                                     ctx.run_dir)
        with timings.phase("evaluate"):
            accuracy_val = onnx_accuracy(artifact, ctx.task.val_x, ctx.task.val_y)
            accuracy_test = onnx_accuracy(artifact, ctx.task.test_x, ctx.task.test_y)
        # the deployed bytes are what gets reported: measure them, not the screening copy
        measurement = builder.measure(artifact, timings, lease)
        for key, value in constraint_values(ctx.budgets, measurement.latency_ms_p90,
                                            artifact.size_mb).items():
            trial.set_constraint(key, value)
        trial.set_user_attr("stage", STAGE_EVALUATED)
        trial.set_user_attr("finetune", tune)
        trial.set_user_attr("artifact", artifact.to_dict())
        trial.set_user_attr("measurement", measurement.to_dict())
        trial.set_user_attr("accuracy_val", accuracy_val)
        trial.set_user_attr("accuracy_test", accuracy_test)
        return objective_values(ctx.space, accuracy_val, measurement, artifact)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
