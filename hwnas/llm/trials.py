"""A language model's compression search as an `Evaluator`: what the one trial pipeline
(hwnas/search/pipeline.py) runs for every sampler, the engine's as well as Optuna's.

A trial leases a device of the pool (the engine proposes for its pool). Its candidate (the
knobs of hwnas/knobs/llm.py) becomes a slice plan and a precision plan. Cheap calls: slice the
base model, export the onnxruntime-genai folder of that plan (hwnas/llm/export.py) and measure
the folder generating on the device (the agent's genai runtime). Expensive call: heal the
sliced model (distillation from the unpruned parent on the domain text, ``finetune.max_steps``
x fidelity steps), export again, and evaluate the EXPORTED folder on the held-out selection
text: next-token accuracy (the quality objective, ``accuracy``) and perplexity beside it.
Without healing the screened folder is the deployed one; with it, the healed folder is
measured again and decides.

The record is the compression search's TrialOutcome (reports, `hwnas status` and a resumed
search read it alike); the language-model figures are in the trial's ``llm`` attribute.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Mapping

import optuna

from hwnas import metrics
from hwnas.budgets import constraint_values, describe_excess
from hwnas.errors import DeviceError
from hwnas.knobs import Candidate
from hwnas.knobs.llm import LlmDraft, draft_of
from hwnas.records import Artifact, Measurement, TrialOutcome, TrialStage
from hwnas.search.candidates import Timings
from hwnas.search.compression import compression_figures, _budgets
from hwnas.search.controllers import controller_id, fail_abandoned_trials, retry_trial
from hwnas.search.evaluator import Budget, Evaluator, HardwareReport
from hwnas.search.measuring import DeviceLease, TrialMeasurer
from hwnas.search.policy import STAGE_DUPLICATE
from hwnas.search.twins import Progress, finished_twin, reuse
from hwnas.space import distributions, suggest, uniform_ladders

if TYPE_CHECKING:
    from hwnas.llm.export import ExportedFolder
    from hwnas.config.models import Budgets, DeviceProfile, SearchSpace
    from hwnas.llm.saliency import Saliency
    from hwnas.llm.source import CausalLM
    from hwnas.llm.text import LanguageData
    from hwnas.space import SpaceShape
    from hwnas.remote.pool import DevicePool
    from hwnas.run import RunFolder


def folder_artifact(exported: "ExportedFolder", parameters: int) -> Artifact:
    """An exported folder as the trial records it: its manifest's sha256 (what the agent
    stores it under) and its total bytes."""
    from hwnas_agent.manifest import from_folder

    from hwnas.profile_generation import decoder_file

    manifest = from_folder(str(exported.path), decoder_file(exported.path))
    size = sum(entry.size for entry in manifest.files)
    return Artifact(str(exported.path), manifest.sha256, size, (), parameters)


@dataclasses.dataclass(frozen=True)
class LlmPrepared:
    """Everything a trial needs that does not change between trials."""

    space: SearchSpace
    device: DeviceProfile
    devices: tuple[DeviceProfile, ...]
    budgets: Budgets
    base: "CausalLM"
    data: "LanguageData"
    saliency: "Saliency"
    drop_order: tuple[int, ...]
    shape: "SpaceShape"


@dataclasses.dataclass
class _Trial:
    trial: optuna.Trial
    progress: Progress
    measurer: TrialMeasurer
    work: Path
    inherited: TrialOutcome | None = None
    candidate: Candidate | None = None
    draft: LlmDraft | None = None
    sliced: Any = None  # the pruned transformers model, before healing
    screen: Artifact | None = None  # the exported folder of the sliced model
    artifact: Artifact | None = None  # the deployed folder (healed where healing is on)
    screen_measurement: Measurement | None = None
    measurement: Measurement | None = None
    llm: dict[str, Any] = dataclasses.field(default_factory=dict)
    copied: bool = False
    behind: list[tuple[HardwareReport, Measurement]] = dataclasses.field(default_factory=list)


class LlmEvaluator(Evaluator):
    """One trial per thread; a pool of devices runs one thread per device."""

    def __init__(self, prepared: LlmPrepared, pool: "DevicePool", run: "RunFolder",
                 config_version: str | None) -> None:
        self.prepared, self.pool, self.run = prepared, pool, run
        self.config_version = config_version
        self.space = prepared.space
        self.budgets = _budgets(prepared.budgets)
        self.wanted = tuple(dict.fromkeys([b.figure for b in self.budgets] +
                                          list(self.space.objectives[1:])))
        # healing makes new weights: the healed folder is measured again and decides
        self.measure_after_evaluation = self.space.finetune.max_steps > 0 and \
            "finetune" in self.space.model_fields_set
        self._local = threading.local()
        self._lock = threading.Lock()  # one export at a time (the builder is not re-entrant)

    # --- the engine's contract -------------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        return suggest(trial, self.space, self.prepared.shape)

    def describe(self, candidate: Hashable) -> dict:
        assert isinstance(candidate, Candidate)
        return candidate.to_dict()

    def distributions(self) -> dict[str, Any]:
        return distributions(self.space, self.prepared.shape)

    def ladders(self) -> list[list[dict[str, Any]]]:
        return uniform_ladders(self.space, self.prepared.shape)

    def budgets_for(self, pool: str | None) -> tuple[Budget, ...]:
        return self.budgets

    def open_trial(self, trial: optuna.Trial) -> str | None:
        self.close_trial(trial)
        inherited = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING") \
            if trial.user_attrs.get("candidate") is not None else None
        fail_abandoned_trials(trial.study)
        lease = DeviceLease(self.pool)
        progress = Progress(trial, TrialOutcome(
            TrialStage.RUNNING, config_version=self.config_version, origin=trial.number,
            controller=controller_id(), device=lease.device.name, device_pool=lease.device.pool))
        self._local.now = _Trial(trial, progress, TrialMeasurer(lease, Timings(), progress),
                                 self.run.work_dir(trial.number), inherited)
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
            {d.pool for d in self.pool.alive}
        return finished_twin(trial, pools, now.progress)

    def measure(self, candidate: Hashable, rounds: int | None = None) -> HardwareReport:
        now = self._current(candidate)
        if now.artifact is not None:  # the deployed folder
            now.measurement = now.measurer.measure(now.artifact, rounds)
            now.progress.update(measurement=now.measurement)
            return self._report(now, now.measurement, now.artifact)
        self._screen_copy(now)
        assert now.screen is not None
        now.screen_measurement = now.measurer.measure(now.screen, rounds)
        now.progress.update(screen_measurement=now.screen_measurement)
        return self._report(now, now.screen_measurement, now.screen)

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
        from hwnas.llm.evaluate import evaluate_folder
        from hwnas.llm.heal import HealSettings, heal

        now = self._current(candidate)
        self._screen_copy(now)
        assert now.screen is not None and now.candidate is not None
        settings = self.space.finetune
        steps = int(round(settings.max_steps * fidelity)) if self.measure_after_evaluation else 0
        timings = now.measurer.timings
        if steps > 0:
            import copy

            student = copy.deepcopy(now.sliced)
            with timings.phase("heal"):
                report = heal(student, self.prepared.base.model,
                              _tensor(self.prepared.data.healing),
                              HealSettings(steps=steps, max_seconds=settings.max_seconds,
                                           batch_size=settings.batch_size,
                                           learning_rate=settings.learning_rate,
                                           temperature=settings.temperature,
                                           distill_weight=settings.distill_weight,
                                           seed=now.candidate.finetune_seed(
                                               self.space.search.seed)))
            now.llm["heal"] = report.to_dict()
            now.artifact = self._export(now, student, now.work / f"healed-{steps}")
        else:
            now.llm["heal"] = None
            now.artifact = now.screen
        with timings.phase("evaluate"):
            evaluation = evaluate_folder(now.artifact.path, self.prepared.data.selection,
                                         self.prepared.data.questions or None,
                                         self.prepared.base.tokenizer)
        now.llm.update(perplexity_val=evaluation.perplexity.perplexity,
                       tokens_val=evaluation.perplexity.tokens,
                       mcq_accuracy_val=evaluation.mcq.accuracy if evaluation.mcq else None)
        accuracy = evaluation.perplexity.top1_accuracy
        now.progress.update(accuracy_val=accuracy, artifact=now.artifact)
        return accuracy

    def end_trial(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                  earlier: optuna.trial.FrozenTrial | None = None) -> None:
        now = self._current(candidate)
        if stage == STAGE_DUPLICATE and earlier is not None:
            reuse(trial, earlier, self.config_version)
            now.copied = True
            return
        changes: dict = {"stage": TrialStage(stage)}
        if stage == TrialStage.REJECTED.value and now.screen_measurement is not None:
            assert now.screen is not None
            changes.update(artifact=now.screen, measurement=now.screen_measurement,
                           rejection=describe_excess(constraint_values(
                               self.prepared.budgets, now.screen_measurement, now.screen)))
        if stage == TrialStage.EVALUATED.value and now.artifact is not None:
            if now.measurement is None:  # not healed: the screened folder is the deployed one
                changes["measurement"] = now.screen_measurement
            kept = self.run.path / "models" / f"trial-{trial.number}"
            if kept.exists():
                shutil.rmtree(kept)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(now.artifact.path, kept)  # the folder to deploy: `hwnas export`
            now.llm["folder"] = str(kept.relative_to(self.run.path))
        now.progress.update(**changes)
        trial.set_user_attr("llm", dict(now.llm))

    def trial_failed(self, trial: optuna.Trial, candidate: Hashable | None,
                     exc: Exception) -> bool:
        now = getattr(self._local, "now", None)
        if now is not None:
            now.progress.failed(exc)
        self.close_trial(trial)
        if isinstance(exc, DeviceError):
            if candidate is not None:
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            return not self.pool.alive
        return False

    def interrupted(self, trial: optuna.Trial) -> None:
        now = getattr(self._local, "now", None)
        if now is not None and now.candidate is not None:
            now.progress.failed(KeyboardInterrupt("interrupted (Ctrl-C)"))
            retry_trial(trial.study, trial.number)

    def close_trial(self, trial: optuna.Trial) -> None:
        now = getattr(self._local, "now", None)
        self._local.now = None
        if now is None:
            return
        lease = now.measurer.lease
        if not now.copied:
            now.progress.update(timings_s=tuple(now.measurer.timings.seconds.items()),
                                device=lease.device.name, device_pool=lease.device.pool,
                                devices_lost=tuple(lease.lost))
        lease.release()
        shutil.rmtree(now.work, ignore_errors=True)

    # --- the trial's lifetime ------------------------------------------------------------

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
        """The candidate sliced and exported before healing, once per trial."""
        if now.screen is not None:
            return
        from hwnas.llm.slicing import slice_model

        assert now.candidate is not None
        prepared = self.prepared
        now.draft = draft_of(dict(now.candidate.values), self.space.knobs,
                             prepared.base.config, prepared.drop_order)
        plan = now.draft.slice_plan()
        with now.measurer.timings.phase("slice"):
            now.sliced = slice_model(prepared.base.model, plan, prepared.saliency)
        now.llm.update(slice_plan=dataclasses.asdict(plan),
                       precision_plan=now.draft.precision_plan().as_dict(),
                       parameters=sum(p.numel() for p in now.sliced.parameters()))
        now.screen = self._export(now, now.sliced, now.work / "screened")

    def _export(self, now: _Trial, model: Any, folder: Path) -> Artifact:
        from hwnas.llm.export import export_genai

        assert now.draft is not None
        started = time.perf_counter()
        with now.measurer.timings.phase("export"), self._lock:
            exported = export_genai(model, self.prepared.base.tokenizer, folder,
                                    now.draft.precision_plan())
        now.llm.setdefault("export_seconds", []).append(time.perf_counter() - started)
        now.llm["exporter"] = exported.as_dict().get("versions")
        return folder_artifact(exported, sum(p.numel() for p in model.parameters()))

    def _report(self, now: _Trial, measurement: Measurement, artifact: Artifact) -> HardwareReport:
        report = compression_figures(measurement, artifact, self.prepared.budgets.basis,
                                     self.wanted)
        report = _with_decode_interval(report, measurement)
        now.behind.append((report, measurement))
        return report


def _with_decode_interval(report: HardwareReport, measurement: Measurement) -> HardwareReport:
    """Decode tokens/s with the interval the agent gives for it (screening re-measures a
    figure whose interval holds its budget)."""
    from hwnas.search.evaluator import HardwareFigure

    interval = getattr(measurement, "decode_tokens_per_s_ci95", None)
    figures = []
    for figure in report.figures:
        if figure.name == "decode_tokens_per_s" and interval and interval[0] < interval[1]:
            rounds = measurement.generation_rounds or 1
            figure = HardwareFigure(figure.name, figure.value, (float(interval[0]),
                                  float(interval[1])), rounds, measurement.decode_cv)
        figures.append(figure)
    return HardwareReport(tuple(figures), report.detail)


def _tensor(blocks: Any) -> Any:
    import torch

    return torch.from_numpy(blocks)


def figures_of(values: Mapping[str, float]) -> str:
    """``name value unit`` for a table line."""
    return ", ".join(f"{name} {value:{metrics.get(name).spec}} {metrics.get(name).unit}".strip()
                     for name, value in values.items())
