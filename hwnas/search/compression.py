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
import tempfile
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import optuna
import torch

from hwnas import metrics
from hwnas.budgets import constraint_values, measured
from hwnas.config.models import Budgets
from hwnas.compress.prune import PrunedModel
from hwnas.records import Artifact, Candidate, Measurement, OutputFidelity, TrialStage
from hwnas.remote.screen import needs_screening
from hwnas.export.onnx import ExportedModel
from hwnas.search.evaluator import (AcceleratorVerdict, Budget, HardwareFigure, HardwareReport,
                                    figures_from_measurement)
from hwnas.search.candidates import (CandidateBuilder, Timings, TrialContext,
                                     refuse_emulated_latency, train_and_evaluate)
from hwnas.search.recording import RecordingEvaluator, TrialState
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
    """The budgets a measurement or the bytes decide (screened, measured again where noise
    holds them). The output-fidelity floor and an evaluation's budget (a language model's
    perplexity) are known only after evaluation: set by the evaluator's end_trial."""
    return tuple(Budget(name, limit, metrics.get(name).higher_is_better)
                 for name, limit in budgets.limits().items()
                 if name != "fidelity_cosine_min" and metrics.get(name).screenable)


@dataclasses.dataclass
class _Trial(TrialState):
    """What one trial has built and measured so far."""

    pruned: PrunedModel | None = None
    exported: ExportedModel | None = None
    fidelity: OutputFidelity | None = None


class CompressionEvaluator(RecordingEvaluator):
    measure_after_evaluation = True
    trial_type = _Trial

    def __init__(self, ctx: TrialContext, builder: CandidateBuilder | None = None) -> None:
        self.ctx = ctx
        self.builder = builder or CandidateBuilder(ctx)
        # the output-fidelity floor is known only after fine-tuning: set by end_trial
        self.budgets = _budgets(ctx.budgets)
        self.wanted = metrics.measured_names([*(b.figure for b in self.budgets),
                                              *ctx.space.objectives[1:]])
        self._recording(ctx.devices, ctx.run, ctx.config_version)
        self._built: dict[Candidate, float] = {}  # the exported bytes' size, MB
        # multiply-accumulates by the pruned structure (Candidate.structure): the proxy of the
        # hundreds of pool candidates the engine ranks, pruned only, never exported
        self._macs: dict[tuple, int] = {}

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
        size_mb = self._build(candidate)
        return {name: size_mb for name in _STATIC}

    def proxies(self, candidate: Hashable) -> Mapping[str, float]:
        """Multiply-accumulates of the pruned network: where the budgets leave the size fixed
        (the frontier), the candidate that computes more on the same bytes (keeps the
        high-resolution early layers wider) tends to be the more accurate."""
        assert isinstance(candidate, Candidate)
        structure = candidate.structure()
        if structure not in self._macs:
            self._macs[structure] = self._multiply_accumulates(
                self.builder.prune_with_plan(candidate).module)
        return {"log_macs": float(torch.log(torch.tensor(float(self._macs[structure]))))}

    def _multiply_accumulates(self, pruned: torch.nn.Module) -> int:
        return multiply_accumulates(pruned.eval(), torch.as_tensor(self.builder.calibration[:1]))

    def ladders(self) -> list[list[dict[str, Any]]]:
        """Uniform models: each knob says what "cheaper" means for it (hwnas/space.py)."""
        return uniform_ladders(self.ctx.space, self.ctx.shape)

    def _build(self, candidate: Hashable) -> float:
        assert isinstance(candidate, Candidate)
        if candidate not in self._built:
            with tempfile.TemporaryDirectory(prefix="hwnas-static-") as work:
                pruned, _exported, artifact = self.builder.screen_copy(
                    candidate, Path(work), Timings())
            self._built[candidate] = artifact.size_mb
            if candidate.structure() not in self._macs:
                self._macs[candidate.structure()] = self._multiply_accumulates(pruned.module)
        return self._built[candidate]

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

    def _screened(self, measurement: Measurement) -> None:
        refuse_emulated_latency(self.ctx.space, self.ctx.budgets_for(measurement), measurement)

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
        now, changes = self._ending(trial, candidate, stage, earlier, self.ctx.budgets_for)
        if changes is None:
            return
        if stage == TrialStage.EVALUATED.value and now.fidelity is not None:
            assert now.measurement is not None and now.artifact is not None
            budgets = self.ctx.budgets_for(now.measurement)
            if budgets.fidelity_cosine_min is not None:
                trial.set_constraint("fidelity_cosine_min", constraint_values(
                    budgets, now.measurement, now.artifact, now.fidelity)["fidelity_cosine_min"])
        now.progress.update(**changes)

    def _screen_copy(self, now: _Trial) -> None:
        """The candidate pruned and quantized before fine-tuning, built once per trial."""
        if now.screen is None:
            assert now.candidate is not None
            now.pruned, now.exported, now.screen = self.builder.screen_copy(
                now.candidate, now.work, now.measurer.timings)

    def _figures(self, measurement: Measurement, artifact: Artifact) -> HardwareReport:
        return compression_figures(measurement, artifact,
                                   self.ctx.budgets_for(measurement).basis, self.wanted)
