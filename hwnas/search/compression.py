"""The compression search as an evaluator of the search engine (``search.sampler: engine``).

The engine's policy (hwnas/search/engine.py: pool ranking by expected improvement times the
odds of meeting the budgets, hardware-first noise-aware screening, a per-device figure
predictor, stopping) is the same code that searches the NAS-Bench-201 replay; this module
is what it talks to. Cheap calls: prune + quantize + export the candidate and measure it on
the leased device (before fine-tuning: what screening decides on; after: the deployed
bytes, which decide). Expensive call: fine-tune at a fidelity, export, evaluate the bytes.

Each trial keeps the record every other search writes (TrialOutcome): reports, model
cards, `hwnas finalize` and a resumed search read it the same way. A trial left by a killed
controller is retried (WAITING) and reuses what it had measured.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import optuna
import torch
from optuna.distributions import CategoricalDistribution

from hwnas import metrics
from hwnas.budgets import constraint_values, describe_excess, measured
from hwnas.compress.prune import PrunedModel
from hwnas.disk import no_space
from hwnas.errors import DeviceError
from hwnas.records import Artifact, Candidate, Measurement, OutputFidelity, TrialOutcome, TrialStage
from hwnas.search.controllers import controller_id
from hwnas.search.engine import STAGE_DUPLICATE
from hwnas.search.evaluator import (Budget, Evaluator, HardwareFigure, HardwareReport,
                                    figures_from_measurement)
from hwnas.search.objective import (CandidateBuilder, DeviceLease, Progress, Timings,
                                    TrialContext, TrialMeasurer, refuse_emulated_latency, reuse,
                                    train_and_evaluate)
from hwnas.models.core import multiply_accumulates
from hwnas.space import distributions, suggest

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


@dataclasses.dataclass
class _Trial:
    """What one trial has built and measured so far."""

    trial: optuna.Trial
    candidate: Candidate
    progress: Progress
    measurer: TrialMeasurer
    work: Path
    pruned: PrunedModel | None = None
    screen: Artifact | None = None
    screen_measurement: Measurement | None = None
    artifact: Artifact | None = None  # the deployed bytes, once fine-tuned
    measurement: Measurement | None = None
    fidelity: OutputFidelity | None = None
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
        self.budgets = tuple(Budget(name, limit, metrics.get(name).higher_is_better)
                             for name, limit in ctx.budgets.limits().items()
                             if name != "fidelity_cosine_min")
        self.wanted = tuple(dict.fromkeys([b.figure for b in self.budgets] +
                                          list(ctx.space.objectives[1:])))
        self._trial: _Trial | None = None
        self._built: dict[Candidate, tuple[float, int]] = {}  # size MB, multiply-accumulates

    # --- the engine's contract -------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        return suggest(trial, self.ctx.space, self.ctx.shape)  # type: ignore[arg-type]

    def describe(self, candidate: Hashable) -> dict:
        assert isinstance(candidate, Candidate)
        return candidate.to_dict()

    def static_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """The exported bytes' size: pruned, quantized and exported here, never measured."""
        size_mb, _macs = self._build(candidate)
        return {name: size_mb for name in _STATIC if any(b.figure == name for b in self.budgets)}

    def proxies(self, candidate: Hashable) -> Mapping[str, float]:
        """Multiply-accumulates of the pruned network: where the budgets leave the size fixed
        (the frontier), the candidate that computes more on the same bytes (keeps the
        high-resolution early layers wider) tends to be the more accurate."""
        return {"log_macs": float(torch.log(torch.tensor(float(self._build(candidate)[1]))))}

    def ladders(self) -> list[list[dict[str, Any]]]:
        """Uniform models: the same keep ratio (every value of the width knob, largest first)
        in every stage, one precision for the whole model, per precision of the device; the
        other knobs at their least destructive choice (no global pruning, every head and MLP
        unit kept, the first criterion and calibration)."""
        found = distributions(self.ctx.space, self.ctx.shape)
        keeps = sorted({value for name, d in found.items() if name.startswith("keep_")
                        for value in _values(d)}, reverse=True) or [1.0]
        fixed: dict[str, Any] = {}
        for name, dist in found.items():
            if not isinstance(dist, CategoricalDistribution) or name.startswith("precision_"):
                continue
            if name == "global_pruning_ratio":
                fixed[name] = min(dist.choices)  # type: ignore[type-var]
            elif name.startswith(("heads_", "mlp_")):
                fixed[name] = max(dist.choices)  # type: ignore[type-var]
            elif not name.startswith("keep_"):
                fixed[name] = dist.choices[0]
        ladders = []
        for precision in self.ctx.shape.precisions:
            plan = {name: precision for name in found if name.startswith("precision_")}
            ladders.append([fixed | plan | {name: _nearest(found[name], keep)
                                            for name in found if name.startswith("keep_")}
                            for keep in keeps])
            if not plan:  # no precision knob: one ladder
                break
        return ladders

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

    def start_trial(self, trial: optuna.Trial, candidate: Hashable) -> None:
        assert isinstance(candidate, Candidate)
        self._close()
        # a retry of a trial whose controller died carries what that one had measured
        inherited = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING")
        origin = inherited.origin if inherited.origin is not None else trial.number
        progress = Progress(trial, TrialOutcome(
            TrialStage.RUNNING, candidate=candidate, config_version=self.ctx.config_version,
            origin=origin, controller=controller_id()))
        lease = DeviceLease(self.ctx.devices)
        progress.update(device=lease.device.name, device_pool=lease.device.pool)
        self._trial = _Trial(trial, candidate, progress,
                             TrialMeasurer(lease, Timings(), progress, inherited),
                             self.ctx.run.work_dir(trial.number))

    def measure(self, candidate: Hashable, rounds: int | None = None) -> HardwareReport:
        now = self._current(candidate)
        basis = self.ctx.budgets.basis
        if now.artifact is not None:  # the deployed bytes
            now.measurement = now.measurer.measure(now.artifact, rounds)
            now.progress.update(measurement=now.measurement)
            return now.report(compression_figures(now.measurement, now.artifact, basis,
                                                  self.wanted), now.measurement)
        if now.screen is None:
            now.pruned, _exported, now.screen = self.builder.screen_copy(
                now.candidate, now.work, now.measurer.timings)
        now.screen_measurement = now.measurer.measure(now.screen, rounds)
        refuse_emulated_latency(self.ctx.space, self.ctx.budgets, now.screen_measurement)
        now.progress.update(screen_measurement=now.screen_measurement)
        return now.report(compression_figures(now.screen_measurement, now.screen, basis,
                                              self.wanted), now.screen_measurement)

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
        if now.pruned is None:  # evaluated without screening
            now.pruned, _exported, now.screen = self.builder.screen_copy(
                now.candidate, now.work, now.measurer.timings)
        now.artifact, accuracy_val, now.fidelity = train_and_evaluate(
            self.ctx, self.builder, now.trial, now.progress, now.pruned,
            now.measurer.lease.device.profile, now.work, now.measurer.timings, fidelity)
        return accuracy_val

    def end_trial(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                  earlier: optuna.trial.FrozenTrial | None = None) -> None:
        now = self._current(candidate)
        try:
            if stage == STAGE_DUPLICATE and earlier is not None:
                reuse(trial, earlier, self.ctx.config_version)
                return
            changes: dict = {"stage": TrialStage(stage)}
            if stage == TrialStage.REJECTED.value and now.screen_measurement is not None:
                assert now.screen is not None
                changes.update(artifact=now.screen, measurement=now.screen_measurement,
                               rejection=describe_excess(constraint_values(
                                   self.ctx.budgets, now.screen_measurement, now.screen)))
            if stage == TrialStage.EVALUATED.value and now.fidelity is not None and \
                    self.ctx.budgets.fidelity_cosine_min is not None:
                assert now.measurement is not None and now.artifact is not None
                trial.set_constraint("fidelity_cosine_min", constraint_values(
                    self.ctx.budgets, now.measurement, now.artifact,
                    now.fidelity)["fidelity_cosine_min"])
            now.progress.update(**changes)
        finally:
            self._close()

    def trial_failed(self, trial: optuna.Trial, candidate: Hashable, exc: Exception) -> bool:
        now = self._trial
        if now is not None:
            now.progress.failed(exc)
        self._close()
        if isinstance(exc, DeviceError):
            # no device of its pool is left: try this candidate again when the search resumes
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            return not self.ctx.devices.alive
        if no_space(exc) is not None:  # every trial after it would fail alike: stop
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            return True
        return False

    # --- the trial's lifetime ----------------------------------------------------------

    def _current(self, candidate: Hashable) -> _Trial:
        if self._trial is None or self._trial.candidate != candidate:
            raise RuntimeError("the engine called the evaluator outside the trial it started")
        return self._trial

    def _close(self) -> None:
        now, self._trial = self._trial, None
        if now is None:
            return
        lease = now.measurer.lease
        now.progress.update(timings_s=tuple(now.measurer.timings.seconds.items()),
                            device=lease.device.name, device_pool=lease.device.pool,
                            devices_lost=tuple(lease.lost))
        lease.release()
        shutil.rmtree(now.work, ignore_errors=True)


def _values(distribution: Any) -> list[float]:
    if isinstance(distribution, CategoricalDistribution):
        return [float(v) for v in distribution.choices]
    count = int(round((distribution.high - distribution.low) / distribution.step))
    return [round(distribution.low + i * distribution.step, 10) for i in range(count + 1)]


def _nearest(distribution: Any, value: float) -> Any:
    """The value a stage's width parameter allows closest to ``value`` (stages may differ)."""
    return min(_values(distribution), key=lambda v: abs(v - value))
