"""The one trial pipeline: every sampler's trials run through it.

candidate -> (a duplicate: a copy, nothing paid twice) -> (predicted far over a budget: skipped)
-> screen (accelerator compatibility, then hardware: noise-aware per the policy) -> fine-tune
along the fidelity schedule -> evaluate -> measure the deployed bytes -> record.

It is the objective ``study.optimize`` calls, whichever sampler proposes: the engine's
(proposer.py: its predictions and books are read here) or an Optuna one (tpe, nsga2,
random: ``policy.PLAIN``, measured once before and once after fine-tuning). What is searched
is an `Evaluator` (the compression search, or a replay of benchmark tables).

| stage | state | values | constraints |
|---|---|---|---|
| evaluated | COMPLETE | accuracy (+ objective figures) | from the measured figures |
| rejected_before_finetune | COMPLETE | NOT_EVALUATED | measured, > 0 (breaks a budget) |
| skipped_predicted_over_budget | PRUNED | - | none: the figure was predicted, not measured |
| stopped_at_fidelity | PRUNED | - (accuracies per fidelity in user attrs) | measured |
| duplicate | as the trial it repeats | copied | copied |
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from hwnas import metrics
from hwnas.metrics import worst
from hwnas.interrupts import check as check_interrupt
from hwnas.policy_record import PolicyProgress
from hwnas.search.books import Books, PoolBooks
from hwnas.search.evaluator import Budget, Evaluator, HardwareReport
from hwnas.search.policy import (NOT_EVALUATED, PLAIN, STAGE_DUPLICATE, STAGE_EVALUATED,
                                 STAGE_REJECTED, STAGE_SKIPPED, STAGE_STOPPED, Policy)
from hwnas.search.screening import BetweenMeasurements, BudgetDecision, screen

if TYPE_CHECKING:
    from hwnas.search.proposer import EngineSampler


class TrialPipeline:
    def __init__(self, evaluator: Evaluator, policy: Policy = PLAIN,
                 engine: "EngineSampler | None" = None, objectives: tuple[str, ...] = (),
                 log: Callable[[str], None] | None = None) -> None:
        """``engine``: the study's sampler when it is the engine (its books and predictions
        are the pipeline's); ``objectives``: hardware figures reported as further study
        values after accuracy."""
        self.evaluator, self.policy, self.engine = evaluator, policy, engine
        self.objectives, self.log = objectives, log or (lambda _message: None)
        self.books = engine.books if engine is not None else PoolBooks(
            lambda pool: Books(evaluator, policy, evaluator.budgets_for(pool), pool))
        self.fatal: Exception | None = None  # the error that stopped the study, if one did

    def __call__(self, trial: optuna.Trial) -> list[float]:
        candidate: Hashable | None = None
        try:
            check_interrupt()  # a Ctrl-C Python dropped in a garbage-collector callback
            pool = self.evaluator.open_trial(trial)
            candidate = self.evaluator.suggest(trial)
            return self._run(trial, candidate, pool, PolicyProgress(trial))
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            self.evaluator.interrupted(trial)  # Optuna fails the trial; its retry is queued
            raise
        except Exception as exc:
            if self.evaluator.trial_failed(trial, candidate, exc):
                self.fatal = exc
                trial.study.stop()
            self.log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        finally:  # before Optuna tells the study: the record is complete when it finishes
            self.evaluator.close_trial(trial)

    def books_of(self, pool: str | None, study: optuna.Study) -> Books:
        return self.engine.books_of(pool, study) if self.engine is not None \
            else self.books.of(pool, study)

    # --- the trial --------------------------------------------------------------------------

    def _run(self, trial: optuna.Trial, candidate: Hashable, pool: str | None,
             progress: PolicyProgress) -> list[float]:
        evaluator, policy = self.evaluator, self.policy
        books = self.books_of(pool, trial.study)
        progress.update(candidate=evaluator.describe(candidate))
        evaluator.start_trial(trial, candidate)
        if self.engine is not None:
            progress.update(proposed_by=self.engine.proposed_by(trial))
        earlier = books.seen.get(candidate) or \
            evaluator.twin(trial, candidate, own_pool_only=self.engine is not None)
        if earlier is not None:
            return self._repeat(trial, candidate, earlier, progress)
        predicted = self.engine.predicted(trial, candidate, pool) if self.engine else {}
        if predicted:
            progress.update(predicted=predicted)  # never a measurement
            if books.skip(predicted):
                self._finish(progress, candidate, STAGE_SKIPPED, books.budgets)
                raise optuna.TrialPruned()
        verdict = evaluator.accelerator_screen(candidate)
        if verdict is not None:
            # one constraint per name on every screened trial: <= 0 runs whole on the accelerator
            trial.set_constraint("accelerator_compatible", 0.0 if verdict.compatible else 1.0)
            if not verdict.compatible:
                self._finish(progress, candidate, STAGE_REJECTED, books.budgets)
                return [NOT_EVALUATED, *(verdict.figures.get(n, worst(n))
                                         for n in self.objectives)]
        report: HardwareReport | None = None
        decisions: tuple[BudgetDecision, ...] = ()
        if policy.screening:
            report, decisions = self._measure(progress, candidate, books, screened=True)
            if not all(d.feasible for d in decisions):
                self._finish(progress, candidate, STAGE_REJECTED, books.budgets, report)
                return self._values(NOT_EVALUATED, report, {})
        accuracy = self._evaluate(progress, candidate)
        if accuracy is None:
            self._finish(progress, candidate, STAGE_STOPPED, books.budgets, report)
            raise optuna.TrialPruned()
        if not policy.screening:  # plain search: the figures come after the accuracy
            report, decisions = self._measure(progress, candidate, books, screened=True)
        elif evaluator.measure_after_evaluation:
            # the deployed bytes decide (noise-aware as well); the screened figures stay in
            # the record as what screening saw
            if report is not None:
                progress.update(hardware_screened=report.to_dict())
            report, decisions = self._measure(progress, candidate, books, screened=False)
        self._finish(progress, candidate, STAGE_EVALUATED, books.budgets, report)
        return self._values(accuracy, report, evaluator.evaluation_figures(candidate))

    def _values(self, accuracy: float, report: HardwareReport | None,
                evaluated: Mapping[str, float]) -> list[float]:
        """The objectives: accuracy, then each figure from the measurement or, for one of
        the evaluation (a language model's perplexity), the evaluator's (worst if none)."""
        figures = [evaluated.get(n, worst(n)) if metrics.get(n).source == "evaluation"
                   else report.figure(n).value if report else math.nan
                   for n in self.objectives]
        return [accuracy, *figures]

    def _measure(self, progress: PolicyProgress, candidate: Hashable, books: Books,
                 screened: bool) -> tuple[HardwareReport, tuple[BudgetDecision, ...]]:
        """Measure until the budgets are decided (screening.py); every measurement is kept in
        the trial, where the books learn from it."""
        before = progress.record
        separate: dict[str, list[float]] = {} if screened else \
            {f: list(v) for f, v in (before.separate_measurements or {}).items()}
        report, decisions, history = screen(
            self.evaluator, candidate, books.budgets, self.policy.max_rounds,
            self._between(books, separate), self.policy.max_separate,
            self.policy.separate_rounds)
        self.evaluator.decided(candidate, report)
        # every separate measurement of this model (the screened copy's too: the deployed
        # bytes have its graph), which is what the spread between measurements learns from
        for decision in decisions:
            low, high = report.figure(decision.figure).ci95
            if low < high:  # a measured figure, not an exact one (the exported bytes' size)
                separate[decision.figure] = [*separate.get(decision.figure, []),
                                             *decision.measured]
        taken = len(history) + 1
        rounds = sum(max(f.rounds for f in r.figures) for r in (*history, report))
        progress.update(
            separate_measurements={f: tuple(v) for f, v in separate.items()},
            hardware=report.to_dict(),
            measurements=(0 if screened else before.measurements or 0) + taken,
            measurement_rounds=(0 if screened else before.measurement_rounds or 0) + rounds,
            budget_decisions=tuple(d.to_dict() for d in decisions),
            hardware_before_remeasuring=tuple(r.to_dict() for r in history) or None)
        return report, decisions

    @staticmethod
    def _between(books: Books, separate: dict[str, list[float]]
                 ) -> dict[str, BetweenMeasurements]:
        """The study's spread between measurements, with this trial's own so far."""
        between = books.between()
        for figure, values in separate.items():
            if figure in between and len(values) > 1:
                between[figure] = between[figure].with_group(values)
        return between

    def _evaluate(self, progress: PolicyProgress, candidate: Hashable) -> float | None:
        """Accuracy along the fidelity schedule; None if the study's pruner stops it early."""
        trial, fidelities = progress.trial, self.evaluator.fidelities
        accuracy = math.nan
        by_fidelity = {}
        for step, fidelity in enumerate(fidelities):
            accuracy = self.evaluator.evaluate(candidate, fidelity)
            by_fidelity[str(fidelity)] = accuracy
            progress.update(accuracy_by_fidelity=dict(by_fidelity))
            if step < len(fidelities) - 1:
                trial.report(accuracy, step)
                if self.policy.prune_fidelities and trial.should_prune():
                    return None
        return accuracy

    def _repeat(self, trial: optuna.Trial, candidate: Hashable, earlier: FrozenTrial,
                progress: PolicyProgress) -> list[float]:
        """The same model again (e.g. an equivalent encoding): nothing is paid twice."""
        progress.update(stage=STAGE_DUPLICATE, same_as_trial=earlier.number)
        for key, value in earlier.constraints.items():
            trial.set_constraint(key, value)
        self.evaluator.end_trial(trial, candidate, STAGE_DUPLICATE, earlier)
        if earlier.state == TrialState.COMPLETE:
            return list(earlier.values)
        raise optuna.TrialPruned()

    def _finish(self, progress: PolicyProgress, candidate: Hashable, stage: str,
                budgets: tuple[Budget, ...], report: HardwareReport | None = None) -> None:
        """Record how the trial ended; the constraints come from ``report``, the measurement
        that decided (the deployed bytes for an evaluated trial, not the screened copy):
        Optuna keeps the first value set for a constraint, so they are set once, here."""
        trial = progress.trial
        progress.update(stage=stage)
        if report is not None:
            for budget in budgets:
                trial.set_constraint(budget.figure,
                                     budget.constraint(report.figure(budget.figure).value))
        self.evaluator.end_trial(trial, candidate, stage)


def stop_when_exhausted(engine: "EngineSampler") -> Callable[[optuna.Study, Any], None]:
    """An optimize callback: stop once the engine had no candidate left to propose."""
    def callback(study: optuna.Study, _trial: Any) -> None:
        if engine.exhausted:
            study.stop()
    return callback
