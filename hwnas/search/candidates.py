"""What a trial builds: the candidate pruned, fine-tuned, exported and evaluated.

`CandidateBuilder` prunes and exports candidates of one base model (the search, `hwnas
finalize` and the benchmarks share it); `train_and_evaluate` fine-tunes a pruned candidate at
a fidelity, exports and keeps its deployed bytes and PyTorch weights, and evaluates them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import optuna
import torch
from torch import nn

from hwnas.budgets import NPU_SPACE, latency_uses
from hwnas.compress.finetune import finetune
from hwnas.compress.prune import PrunedModel, prune, pruning_setup
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace
from hwnas.data import TaskData
from hwnas.errors import MeasurementError
from hwnas.evaluate import FIDELITY_SAMPLES, onnx_split_accuracy, output_fidelity
from hwnas.export.onnx import ExportedModel, build_onnx, precision_units
from hwnas.export.precision import ExportStyle
from hwnas.models import model_stages, output_channels
from hwnas.models.saved import plan_document, save_pruned
from hwnas.records import Artifact, Candidate, FineTuneReport, Measurement, OutputFidelity
from hwnas.remote.pool import DevicePool
from hwnas.run import RunFolder
from hwnas.space import SpaceShape

if TYPE_CHECKING:
    from hwnas.search.twins import Progress


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
    torch_device: str = "cpu"  # where PyTorch fine-tunes and ranks saliency (torch_device.py)

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
        return prune(self.pruning, candidate, self.saliency_batches, self.ctx.torch_device)

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
                        seed=candidate.finetune_seed(ctx.space.search.seed),
                        device=ctx.torch_device)
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


def refuse_emulated_latency(space: SearchSpace, budgets: Budgets, measurement: Measurement) -> None:
    """A simulator's latency must never stand for the device's: no objective, no budget."""
    uses = latency_uses(space.objectives, budgets) if measurement.emulated else []
    if uses:
        why = (measurement.agent_report.get("runtime") or {}).get("emulation")
        raise MeasurementError(
            f"{measurement.device}'s figures are emulated ({why}); its latency cannot be used "
            f"for {', '.join(uses)}: search it with objectives [accuracy, model_size_mb] and "
            f"size/fidelity budgets, as {NPU_SPACE} does")
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
