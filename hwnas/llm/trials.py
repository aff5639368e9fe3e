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
from hwnas.knobs import Candidate
from hwnas.knobs.llm import LlmDraft, draft_of
from hwnas.records import Artifact, Measurement, TrialStage
from hwnas.search.compression import compression_figures, _budgets
from hwnas.search.evaluator import Budget, HardwareReport
from hwnas.search.recording import RecordingEvaluator, TrialState
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
    torch_device: str = "cpu"  # where saliency and healing run (hwnas/torch_device.py)


@dataclasses.dataclass
class _Trial(TrialState):
    draft: LlmDraft | None = None
    sliced: Any = None  # the pruned transformers model, before healing
    llm: dict[str, Any] = dataclasses.field(default_factory=dict)


class LlmEvaluator(RecordingEvaluator):
    """One trial per thread; a pool of devices runs one thread per device."""

    trial_type = _Trial

    def __init__(self, prepared: LlmPrepared, pool: "DevicePool", run: "RunFolder",
                 config_version: str | None) -> None:
        self.prepared, self.space = prepared, prepared.space
        self.budgets = _budgets(prepared.budgets)
        self.wanted = metrics.measured_names([*(b.figure for b in self.budgets),
                                              *self.space.objectives[1:]])
        # healing makes new weights: the healed folder is measured again and decides
        self.measure_after_evaluation = self.space.finetune.max_steps > 0 and \
            "finetune" in self.space.model_fields_set
        self._recording(pool, run, config_version)
        self._lock = threading.Lock()  # one export at a time (the builder is not re-entrant)
        self._proxies: Any = None
        self._tokenizer_size: int | None = None

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

    def proxies(self, candidate: Hashable) -> Mapping[str, float]:
        """Zero-cost accuracy hints (hwnas/llm/proxies.py): quantisation noise, structure
        kept."""
        assert isinstance(candidate, Candidate)
        if self._proxies is None:
            from hwnas.llm.proxies import LlmProxies

            self._proxies = LlmProxies(self.prepared.base.model, self.prepared.saliency)
        return self._proxies.of(draft_of(dict(candidate.values), self.space.knobs,
                                         self.prepared.base.config, self.prepared.drop_order))

    def static_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """A lower bound on the exported folder's size, from the plan alone
        (LlmDraft.weight_bytes): the engine never ships a candidate that cannot fit (a
        uniform int8 rung over the budget cost a trial each before), and measures the rest,
        whose exact size the folder gives."""
        assert isinstance(candidate, Candidate)
        draft = draft_of(dict(candidate.values), self.space.knobs, self.prepared.base.config,
                         self.prepared.drop_order)
        return {"model_size_mb": (draft.weight_bytes() + self._tokenizer_bytes()) / 1e6}

    def _tokenizer_bytes(self) -> int:
        """The tokenizer.json every folder carries as the tokenizer writes it (3.5 MB for
        SmolLM2: without it, candidates 1% over a size budget passed as fitting)."""
        if self._tokenizer_size is None:
            import tempfile

            with tempfile.TemporaryDirectory() as scratch:
                self.prepared.base.tokenizer.save_pretrained(scratch)
                found = Path(scratch) / "tokenizer.json"
                self._tokenizer_size = found.stat().st_size if found.exists() else 0
        return self._tokenizer_size

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
                                               self.space.search.seed)),
                              device=self.prepared.torch_device)
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

    def evaluation_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """Perplexity on the selection (val) text and, with questions, MCQ accuracy: of the
        folder evaluate() just evaluated."""
        return evaluated_figures(self._current(candidate).llm)

    def end_trial(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                  earlier: optuna.trial.FrozenTrial | None = None) -> None:
        now, changes = self._ending(trial, candidate, stage, earlier,
                                    lambda _measurement: self.prepared.budgets)
        if changes is None:
            return
        if stage == TrialStage.EVALUATED.value and now.artifact is not None:
            from hwnas.llm.shared import keep_folder, shares_folders

            if now.measurement is None:  # not healed: the screened folder is the deployed one
                changes["measurement"] = now.screen_measurement
            # a fork's trials (study name@version) beside, not over, the copies' folders
            fork = self._run.study_name.partition("@")[2]
            kept = self._run.path / "models" / fork / f"trial-{trial.number}"
            if kept.exists():
                shutil.rmtree(kept)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(now.artifact.path, kept)  # the folder to deploy: `hwnas export`
            now.llm["folder"] = kept.relative_to(self._run.path).as_posix()
            if shares_folders(self._run):  # the primary and `hwnas export` anywhere read it
                keep_folder(self._run, trial, kept, now.artifact.sha256)
            # a budget on the evaluation (a perplexity ceiling) is decided now, as the
            # measured ones were before evaluation
            evaluated = evaluated_figures(now.llm)
            for name, limit in self.prepared.budgets.limits().items():
                metric = metrics.find(name)
                if metric is not None and metric.source == "evaluation" and name in evaluated:
                    trial.set_constraint(name, metric.constraint(evaluated[name], limit))
        now.progress.update(**changes)
        trial.set_user_attr("llm", dict(now.llm))

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

    def _figures(self, measurement: Measurement, artifact: Artifact) -> HardwareReport:
        return compression_figures(measurement, artifact, self.prepared.budgets.basis,
                                   self.wanted)


def evaluated_figures(found: Mapping[str, Any]) -> dict[str, float]:
    """The evaluation's figures besides accuracy, by metric name, from a trial's record."""
    return {name: float(found[key]) for name, key in
            (("perplexity", "perplexity_val"), ("mcq_accuracy", "mcq_accuracy_val"))
            if found.get(key) is not None}


def _tensor(blocks: Any) -> Any:
    import torch

    return torch.from_numpy(blocks)
