"""The search engine: its policy (proposer.py, an Optuna sampler composed of the strategies
in acquisition.py) run through the one trial pipeline (pipeline.py) on a study, until a stop
condition. This driver is what the replay benchmark and the engine's tests run; `hwnas
search` runs the same sampler and pipeline from study.py. Its books live in the Optuna
study, so a killed search resumes from its storage.

Policies: ``acquisition="model"`` scores a pool of candidates (random draws plus every
one-parameter change of the best ones) by expected improvement of a GP over parameters and
proxies times the predicted probability of meeting the budgets, then measures the best and
evaluates it if it is feasible. ``acquisition="sampler"`` asks an Optuna sampler (TPE, GP,
random) for each trial instead; with ``screening`` off, every trial is evaluated, as a
plain Optuna search with constraints would.

``acquisition="frontier"`` searches along the budgets' boundary, for spaces whose evaluator
knows an order (``Evaluator.ladders``: e.g. the same keep ratio in every stage, per
precision) and exact figures without the device (``Evaluator.static_figures``: the exported
bytes' size). It starts at the first candidate of each ladder that fits (statically, then as
measured), evaluates the one the proxies rank first, then moves budget between ordered
parameters of the best evaluated ones: one up and another down by up to
``exchange_steps`` steps, or one parameter changed, keeping only the moves that still fit
statically. Moves are ranked by the proxies' vote times the odds of fitting the measured
budgets, and by the accuracy model's expected improvement once it has
``startup_evaluations`` feasible evaluations. Nothing is evaluated that broke a budget.
"""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import FrozenTrial

from hwnas.search.evaluator import Evaluator
from hwnas.search.pipeline import TrialPipeline
from hwnas.search.policy import (NOT_EVALUATED, STAGE_DUPLICATE, STAGE_EVALUATED,
                                 STAGE_REJECTED, STAGE_SKIPPED, STAGE_STOPPED, EngineResult,
                                 Evaluation, Policy)
from hwnas.search.proposer import EngineSampler

__all__ = ["NOT_EVALUATED", "STAGE_DUPLICATE", "STAGE_EVALUATED", "STAGE_REJECTED",
           "STAGE_SKIPPED", "STAGE_STOPPED", "EngineResult", "Evaluation", "Policy",
           "SearchEngine", "write_summary"]


class SearchEngine:
    def __init__(self, evaluator: Evaluator, study: optuna.Study, policy: Policy = Policy(),
                 seed: int = 0, objectives: tuple[str, ...] = (),
                 log: Callable[[str], None] | None = None,
                 candidate_cache: dict | None = None,
                 after_trial: Callable[[FrozenTrial], None] | None = None) -> None:
        """``objectives``: hardware figures reported as further study values after accuracy.
        ``candidate_cache``: params -> (candidate, encoding), shareable between engines on
        the same evaluator and space (a benchmark's seeds). ``after_trial``: called with
        every trial the engine finished (e.g. a progress bar). The study's own sampler
        becomes the engine's base sampler (its first trial, and ``acquisition="sampler"``)."""
        self.study, self.policy = study, policy
        self.after_trial = after_trial or (lambda _trial: None)
        self.log = log or (lambda _message: None)
        self.sampler = EngineSampler(evaluator, policy, seed, base=study.sampler,
                                     candidate_cache=candidate_cache)
        study.sampler = self.sampler
        self.pipeline = TrialPipeline(evaluator, policy, self.sampler, objectives, self.log)

    def run(self, stop_when: Callable[[tuple[Evaluation, ...]], bool] | None = None
            ) -> EngineResult:
        """Search until ``max_evaluations``, the measurement budget, or ``stop_when`` says so."""
        stop_when = stop_when or (lambda _evaluations: False)
        books = self.sampler.books_of(None, self.study)

        def done() -> bool:
            books.refresh(self.study)
            if self.policy.max_measurements is not None and \
                    books.measurements >= self.policy.max_measurements:
                self.log("stopping: measurement budget spent")
                return True
            if self.sampler.exhausted:
                self.log("stopping: no candidate left to try")
                return True
            return len(books.evaluations) >= self.policy.max_evaluations or \
                stop_when(tuple(books.evaluations))

        def callback(study: optuna.Study, trial: FrozenTrial) -> None:
            self.after_trial(trial)
            if done():
                study.stop()

        try:
            if not done():
                self.study.optimize(self.pipeline, callbacks=[callback], catch=(Exception,))
        finally:
            write_summary(self.study, self.sampler)
        if self.pipeline.fatal is not None:
            raise self.pipeline.fatal
        books.refresh(self.study)
        return EngineResult(tuple(books.evaluations), books.measurements, books.rounds,
                            books.skipped, books.rank_accuracy())


def write_summary(study: optuna.Study, sampler: EngineSampler) -> None:
    """What the study keeps of the engine: its policy, and per device pool its books."""
    summary = sampler.summary()
    study.set_user_attr("engine", summary)
    if summary.get("predictor_rank_accuracy"):
        study.set_user_attr("predictor_rank_accuracy", summary["predictor_rank_accuracy"])
