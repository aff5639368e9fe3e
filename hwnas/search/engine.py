"""The search policy, apart from what it searches: sampler, hardware-first screening,
fidelity schedule, stopping. It talks to an `Evaluator` and keeps its books in an Optuna
study (ask/tell), so a killed search resumes from its storage.

One trial per candidate the engine acts on:

| stage | state | values | constraints |
|---|---|---|---|
| evaluated | COMPLETE | accuracy (+ objective figures) | from the measured figures |
| rejected_before_finetune | COMPLETE | NOT_EVALUATED | measured, > 0 (breaks a budget) |
| skipped_predicted_over_budget | PRUNED | - | none: the figure was predicted, not measured |
| stopped_at_fidelity | PRUNED | - (accuracies per fidelity in user attrs) | measured |
| duplicate | COMPLETE | copied from the trial it repeats | copied |

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

import dataclasses
import math
from typing import Any, Callable, Hashable, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hwnas.search.evaluator import Evaluator, HardwareReport
from hwnas.search.screening import BetweenMeasurements, BudgetDecision, FigurePredictor, screen
from hwnas.search.surrogate import (AccuracyModel, ParameterEncoder, expected_improvement,
                                    proxy_matrix, proxy_vote)

STAGE_EVALUATED = "evaluated"
STAGE_REJECTED = "rejected_before_finetune"
STAGE_SKIPPED = "skipped_predicted_over_budget"
STAGE_STOPPED = "stopped_at_fidelity"
STAGE_DUPLICATE = "duplicate"
# a rejected candidate was never evaluated: this stands in for its accuracy so that a
# sampler sees it as bad; reports show it as "not evaluated" (same as search/objective.py)
NOT_EVALUATED = 0.0


@dataclasses.dataclass(frozen=True)
class Policy:
    acquisition: Literal["model", "sampler", "frontier"] = "model"
    screening: bool = True  # measure hardware before any accuracy evaluation
    use_proxies: bool = True  # zero-cost proxies as model features and start-up order
    startup_evaluations: int = 4  # before the accuracy model is fit
    pool_size: int = 1000  # random candidates scored per step
    neighbours_of: int = 3  # plus every one-parameter change of the best k evaluated
    max_rounds: int = 8  # noise-aware screening: re-measure up to this many rounds
    # ... and the spread between separate measurements (learnt from the study's repeated
    # measurements of a model, shrunk towards this prior sd of log values): a figure it puts
    # near the budget is measured apart again, up to ``max_separate`` times; the median decides
    between_prior: float | None = 0.10  # None: trust one measurement's own interval
    max_separate: int = 5
    # rounds of each of those measurements: the spread between them is what they sample,
    # and one round (>= the profile's min_seconds and min_iterations) costs a fifth of five
    separate_rounds: int | None = 1
    predictor: bool = True  # per-device figure predictor: feasibility odds and skipping
    predictor_min_measurements: int = 40
    skip_margin: float = 0.25  # skip measuring only if predicted >= (1 + margin) * budget ...
    skip_probability: float = 0.01  # ... and the odds of meeting it are below this ...
    skip_min_kendall: float = 0.5  # ... and its predictions ranked measured ones this well
    min_feasible_odds: float = 0.1  # pool candidates less likely to fit are not scored
    rerank_after: int = 8  # candidates acted on before the pool is ranked again
    max_evaluations: int = 50
    max_measurements: int | None = None
    prune_fidelities: bool = True  # stop a candidate at a low fidelity per the study's pruner
    exchange_steps: int = 3  # frontier: how far one ordered parameter moves against another


@dataclasses.dataclass(frozen=True)
class Evaluation:
    trial: int
    candidate: Hashable
    accuracy: float
    feasible: bool  # as measured (the engine's decision)


@dataclasses.dataclass(frozen=True)
class EngineResult:
    evaluations: tuple[Evaluation, ...]  # in the order they were paid for
    measurements: int  # hardware measurements (each re-measurement counts)
    measurement_rounds: int
    skipped_by_prediction: int
    rank_accuracy: dict[str, dict[str, Any]]


class SearchEngine:
    def __init__(self, evaluator: Evaluator, study: optuna.Study, policy: Policy = Policy(),
                 seed: int = 0, objectives: tuple[str, ...] = (),
                 log: Callable[[str], None] | None = None,
                 candidate_cache: dict | None = None,
                 after_trial: Callable[[FrozenTrial], None] | None = None) -> None:
        """``objectives``: hardware figures reported as further study values after accuracy.
        ``candidate_cache``: params -> (candidate, encoding), shareable between engines on
        the same evaluator and space (a benchmark's seeds). ``after_trial``: called with
        every trial the engine finished (e.g. a progress bar)."""
        self.evaluator, self.study, self.policy = evaluator, study, policy
        self.after_trial = after_trial or (lambda _trial: None)
        self.objectives, self.log = objectives, log or (lambda _message: None)
        self.budgets = evaluator.budgets
        self._distributions: dict[str, BaseDistribution] | None = None
        self._encoder: ParameterEncoder | None = None
        self._seen: dict[Hashable, FrozenTrial] = {}
        self._evaluations: list[Evaluation] = []
        self._feasible_evaluated: list[tuple[Hashable, dict[str, Any], float]] = []
        self._predictors = {b.figure: FigurePredictor(b.figure, policy.predictor_min_measurements)
                            for b in self.budgets} if policy.predictor else {}
        self.measurements = self.rounds = self.skipped = 0
        self._stop_when: Callable[[tuple[Evaluation, ...]], bool] = lambda _evaluations: False
        self._model: AccuracyModel | None = None
        self._candidates: dict[tuple[tuple[str, Any], ...], tuple[Hashable, np.ndarray]] = \
            candidate_cache if candidate_cache is not None else {}
        self._static: dict[Hashable, bool] = {}  # candidate -> fits the budgets statically
        # figure -> trial -> that model's separate measurements (screened and deployed)
        self._apart: dict[str, dict[int, tuple[float, ...]]] = {b.figure: {} for b in self.budgets}
        self._ladder_cache: list[list[dict[str, Any]]] | None = None
        self._resume()
        self._rng = np.random.default_rng(seed + len(study.trials))

    # --- books --------------------------------------------------------------------------

    def _resume(self) -> None:
        """Rebuild the policy's state from the study: what was seen, measured, evaluated."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                   TrialState.PRUNED)):
            if "stage" not in trial.user_attrs or \
                    trial.user_attrs.get("finalized_from") is not None:
                continue  # not the engine's, or a longer fine-tune (`hwnas finalize`) of one
            candidate = self.evaluator.suggest(optuna.trial.FixedTrial(trial.params))
            self._learn_distributions(trial.distributions)
            self._seen.setdefault(candidate, trial)
            attrs = trial.user_attrs
            self.measurements += attrs.get("measurements", 0)
            self.rounds += attrs.get("measurement_rounds", 0)
            self.skipped += attrs["stage"] == STAGE_SKIPPED
            for figure, values in (attrs.get("separate_measurements") or {}).items():
                if figure in self._apart:
                    self._apart[figure][trial.number] = tuple(values)
            screened = attrs.get("hardware_screened") or attrs.get("hardware")
            if screened:  # what the predictors learnt from: the figures before training
                self._teach_predictors(candidate, trial.params, screened["figures"])
            if attrs["stage"] == STAGE_EVALUATED:
                feasible = all(v <= 0 for v in trial.constraints.values())
                self._evaluations.append(Evaluation(trial.number, candidate, trial.values[0],
                                                    feasible))
                if feasible:
                    self._feasible_evaluated.append(
                        (candidate, self.evaluator.parameters(candidate) or dict(trial.params),
                         trial.values[0]))

    def _learn_distributions(self, distributions: dict[str, BaseDistribution]) -> None:
        if self._distributions is None and distributions:
            self._distributions = dict(distributions)
            self._encoder = ParameterEncoder(distributions)

    def _features(self, candidate: Hashable, params: dict[str, Any]) -> np.ndarray:
        """The figure predictors' features: the (canonical) parameters alone. Latency and
        energy are close to additive over them, and proxies are kept for the candidates that
        may fit (they cost a pass of the network on a real model)."""
        assert self._encoder is not None
        return self._encoder.encode(self.evaluator.parameters(candidate) or params)

    def _teach_predictors(self, candidate: Hashable, params: dict[str, Any],
                          figures: dict[str, dict[str, Any]]) -> None:
        if not self._predictors or self._encoder is None:
            return
        features = self._features(candidate, params)
        for name, predictor in self._predictors.items():
            predictor.add(features, figures[name]["value"])

    def _values(self, accuracy: float, report: HardwareReport | None) -> list[float]:
        figures = [report.figure(n).value if report else math.nan for n in self.objectives]
        return [accuracy, *figures]

    # --- the loop -----------------------------------------------------------------------

    def run(self, stop_when: Callable[[tuple[Evaluation, ...]], bool] | None = None
            ) -> EngineResult:
        """Search until ``max_evaluations``, the measurement budget, or ``stop_when`` says so."""
        policy = self.policy
        self._stop_when = stop_when or (lambda _evaluations: False)
        while len(self._evaluations) < policy.max_evaluations:
            if self._stop_when(tuple(self._evaluations)):
                break
            if policy.max_measurements is not None and self.measurements >= policy.max_measurements:
                self.log("stopping: measurement budget spent")
                break
            if not self._step():
                self.log("stopping: no candidate left to try")
                break
        self.study.set_user_attr("engine", self._summary())
        return EngineResult(tuple(self._evaluations), self.measurements, self.rounds,
                            self.skipped, {n: p.rank_accuracy().to_dict()
                                           for n, p in self._predictors.items()})

    def _summary(self) -> dict[str, Any]:
        return {"evaluations": len(self._evaluations), "measurements": self.measurements,
                "measurement_rounds": self.rounds, "skipped_by_prediction": self.skipped,
                "predictor_rank_accuracy": {n: p.rank_accuracy().to_dict()
                                            for n, p in self._predictors.items()},
                "between_measurements": {
                    n: {"sd_log": s.sd, "degrees_of_freedom": s.degrees_of_freedom,
                        "prior_sd_log": s.prior} for n, s in self._between().items() if s.groups},
                "policy": dataclasses.asdict(self.policy)}

    def _between(self) -> dict[str, BetweenMeasurements]:
        """The spread between separate measurements of one model, per budgeted figure."""
        if self.policy.between_prior is None:
            return {}
        return {figure: BetweenMeasurements(tuple(g for g in groups.values() if len(g) > 1),
                                            self.policy.between_prior)
                for figure, groups in self._apart.items()}

    def _step(self) -> bool:
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        frontier = self.policy.acquisition == "frontier" and not waiting
        if frontier:
            start = self._ladder_start()
            if start is not None:
                self._act_on_params(start)
                return True
        if self.policy.acquisition == "sampler" or waiting or self._distributions is None:
            # a user's enqueued trial first; the model needs one trial to learn the space
            trial = self.study.ask()
            self._act(trial, self.evaluator.suggest(trial))
            return True
        if frontier and self._feasible_evaluated:
            move = self._best_exchange()
            if move is not None:
                self._act_on_params(move[0], move[1])
                return True
        ranked = self._ranked_pool()
        if not ranked:
            return False
        evaluations, acted = len(self._evaluations), 0
        for candidate, params, predicted in ranked:
            # after an evaluation (the model learnt) or a few rejections (the predictor
            # learnt), rank again
            if len(self._evaluations) > evaluations or acted >= self.policy.rerank_after:
                break
            if acted and self._stop_when(tuple(self._evaluations)):
                break
            acted += 1
            if self.policy.max_measurements is not None and \
                    self.measurements >= self.policy.max_measurements:
                break
            self._act_on_params(params, predicted)
        return True

    def _act_on_params(self, params: dict[str, Any],
                       predicted: dict[str, float] | None = None) -> None:
        self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask()
        self._act(trial, self.evaluator.suggest(trial), predicted)

    def _act(self, trial: optuna.Trial, candidate: Hashable,
             predicted: dict[str, float] | None = None) -> None:
        """One trial; an error fails it alone unless the evaluator says the search cannot go on
        (e.g. no device left)."""
        try:
            self._act_on(trial, candidate, predicted)
        except Exception as exc:
            stop = self.evaluator.trial_failed(trial, candidate, exc)
            self.after_trial(self.study.tell(trial, state=TrialState.FAIL))
            self.log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            if stop:
                raise

    def _act_on(self, trial: optuna.Trial, candidate: Hashable,
                predicted: dict[str, float] | None) -> None:
        self._learn_distributions(trial.distributions)
        trial.set_user_attr("candidate", self.evaluator.describe(candidate))
        self.evaluator.start_trial(trial, candidate)
        if candidate in self._seen:
            return self._repeat(trial, candidate, self._seen[candidate])
        if predicted is None:
            predicted = self._predict(candidate, trial.params)
        if predicted:
            trial.set_user_attr("predicted", predicted)  # never a measurement
            if self._skip(predicted):
                self.skipped += 1
                self._finish(trial, None, TrialState.PRUNED, candidate, STAGE_SKIPPED)
                return None
        report, decisions, history = None, (), ()
        if self.policy.screening:
            report, decisions, history = self._measure(trial, candidate)
            if not all(d.feasible for d in decisions):
                return self._finish(trial, self._values(NOT_EVALUATED, report),
                                    TrialState.COMPLETE, candidate, STAGE_REJECTED, report)
        accuracy = self._evaluate(trial, candidate)
        if accuracy is None:
            return self._finish(trial, None, TrialState.PRUNED, candidate, STAGE_STOPPED, report)
        if not self.policy.screening:  # plain search: the figures come after the accuracy
            report, decisions, history = self._measure(trial, candidate)
        elif self.evaluator.measure_after_evaluation:
            # the deployed bytes decide (noise-aware as well); the screened figures stay in
            # the record as what screening saw
            trial.set_user_attr("hardware_screened", report.to_dict() if report else None)
            report, decisions, history = self._measure(trial, candidate, teach=False)
        feasible = all(d.feasible for d in decisions)
        self._evaluations.append(Evaluation(trial.number, candidate, accuracy, feasible))
        if feasible:
            self._feasible_evaluated.append(
                (candidate, self.evaluator.parameters(candidate) or dict(trial.params), accuracy))
        return self._finish(trial, self._values(accuracy, report), TrialState.COMPLETE, candidate,
                            STAGE_EVALUATED, report)

    def _measure(self, trial: optuna.Trial, candidate: Hashable, teach: bool = True
                 ) -> tuple[HardwareReport, tuple[BudgetDecision, ...], tuple[HardwareReport, ...]]:
        report, decisions, history = screen(self.evaluator, candidate, self.budgets,
                                            self.policy.max_rounds, self._between(),
                                            self.policy.max_separate,
                                            self.policy.separate_rounds)
        self.evaluator.decided(candidate, report)
        # every separate measurement of this model (the screened copy's too: the deployed
        # bytes have its graph), which is what the spread between measurements learns from
        separate = dict(trial.user_attrs.get("separate_measurements") or {}) if not teach else {}
        for decision in decisions:
            low, high = report.figure(decision.figure).ci95
            if low < high:  # a measured figure, not an exact one (the exported bytes' size)
                separate[decision.figure] = [*separate.get(decision.figure, []),
                                             *decision.measured]
        trial.set_user_attr("separate_measurements", separate)
        for figure, values in separate.items():
            self._apart[figure][trial.number] = tuple(values)
        taken = len(history) + 1
        rounds = sum(max(f.rounds for f in r.figures) for r in (*history, report))
        self.measurements += taken
        self.rounds += rounds
        taken_before = trial.user_attrs.get("measurements", 0) if not teach else 0
        rounds_before = trial.user_attrs.get("measurement_rounds", 0) if not teach else 0
        trial.set_user_attr("hardware", report.to_dict())
        trial.set_user_attr("measurements", taken_before + taken)
        trial.set_user_attr("measurement_rounds", rounds_before + rounds)
        trial.set_user_attr("budget_decisions", [d.to_dict() for d in decisions])
        if history:
            trial.set_user_attr("hardware_before_remeasuring", [r.to_dict() for r in history])
        if teach:  # once per candidate: its figures before training
            self._teach_predictors(candidate, trial.params, report.to_dict()["figures"])
        if self._predictors:
            self.study.set_user_attr("predictor_rank_accuracy", {
                n: p.rank_accuracy().to_dict() for n, p in self._predictors.items()})
        return report, decisions, history

    def _evaluate(self, trial: optuna.Trial, candidate: Hashable) -> float | None:
        """Accuracy along the fidelity schedule; None if the study's pruner stops it early."""
        fidelities = self.evaluator.fidelities
        accuracy = math.nan
        by_fidelity = {}
        for step, fidelity in enumerate(fidelities):
            accuracy = self.evaluator.evaluate(candidate, fidelity)
            by_fidelity[str(fidelity)] = accuracy
            trial.set_user_attr("accuracy_by_fidelity", by_fidelity)
            if step < len(fidelities) - 1:
                trial.report(accuracy, step)
                if self.policy.prune_fidelities and trial.should_prune():
                    return None
        return accuracy

    def _predict(self, candidate: Hashable, params: dict[str, Any]) -> dict[str, float]:
        predicted: dict[str, float] = {}
        if not self.policy.screening:
            return predicted
        for budget in self.budgets:
            predictor = self._predictors.get(budget.figure)
            if predictor is not None and predictor.ready:
                features = self._features(candidate, params)[None, :]
                predicted[budget.figure] = float(predictor.predict(features)[0])
                predicted[f"{budget.figure}_probability_within"] = float(
                    predictor.probability_within(features, budget)[0])
        return predicted

    def _skip(self, predicted: dict[str, float]) -> bool:
        """Skip measuring only where every guard holds: the predictor has shown its rank
        accuracy on candidates measured after it predicted them (Kendall tau >= the policy's
        floor over >= 10 of them), the figure is predicted at least (1 + margin) over its
        budget, and the odds that it fits are below ``skip_probability``."""
        for budget in self.budgets:
            predictor = self._predictors.get(budget.figure)
            rank = predictor.rank_accuracy() if predictor is not None else None
            if rank is None or rank.pairs < 10 or rank.kendall is None or \
                    rank.kendall < self.policy.skip_min_kendall:
                continue
            if budget.figure in predicted and \
                    budget.constraint(predicted[budget.figure]) >= self.policy.skip_margin and \
                    predicted.get(f"{budget.figure}_probability_within", 1.0) < \
                    self.policy.skip_probability:
                return True
        return False

    def _repeat(self, trial: optuna.Trial, candidate: Hashable, earlier: FrozenTrial) -> None:
        """The same model again (e.g. an equivalent encoding): nothing is paid twice."""
        trial.set_user_attr("stage", STAGE_DUPLICATE)
        trial.set_user_attr("same_as_trial", earlier.number)
        for key, value in earlier.constraints.items():
            trial.set_constraint(key, value)
        self.evaluator.end_trial(trial, candidate, STAGE_DUPLICATE, earlier)
        if earlier.state == TrialState.COMPLETE:
            self.after_trial(self.study.tell(trial, earlier.values))
        else:
            self.after_trial(self.study.tell(trial, state=TrialState.PRUNED))

    def _finish(self, trial: optuna.Trial, values: list[float] | None, state: TrialState,
                candidate: Hashable, stage: str, report: HardwareReport | None = None) -> None:
        """Tell the study; the constraints come from ``report``, the measurement that decided
        (the deployed bytes for an evaluated trial, not the screened copy): Optuna keeps the
        first value set for a constraint and ignores any later one, so they are set once, here."""
        trial.set_user_attr("stage", stage)
        if report is not None:
            for budget in self.budgets:
                trial.set_constraint(budget.figure,
                                     budget.constraint(report.figure(budget.figure).value))
        self.evaluator.end_trial(trial, candidate, stage)
        frozen = self.study.tell(trial, values, state=state)
        self._seen[candidate] = frozen
        self.after_trial(frozen)

    # --- the model's pool ---------------------------------------------------------------

    def _draw(self, count: int) -> list[dict[str, Any]]:
        """Uniform random parameters (numbers uniform in their range, log or not)."""
        assert self._distributions is not None
        columns = {}
        for name, dist in self._distributions.items():
            if isinstance(dist, CategoricalDistribution):
                columns[name] = [dist.choices[i] for i in
                                 self._rng.integers(len(dist.choices), size=count)]
            else:
                low, high = dist.low, dist.high  # type: ignore[attr-defined]
                log = getattr(dist, "log", False)
                u = self._rng.uniform(math.log(low) if log else low,
                                      math.log(high) if log else high, size=count)
                values = np.exp(u) if log else u
                step = getattr(dist, "step", None)
                if step is not None:  # on the distribution's grid, as a sampler would give
                    values = np.clip(low + np.round((values - low) / step) * step, low, high)
                if isinstance(dist, optuna.distributions.IntDistribution):
                    columns[name] = [int(round(v)) for v in values]
                else:
                    columns[name] = [round(float(v), 10) for v in values]
        return [{name: columns[name][i] for name in columns} for i in range(count)]

    def _neighbours(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert self._distributions is not None
        found = []
        for name, dist in self._distributions.items():
            if isinstance(dist, CategoricalDistribution):
                found += [params | {name: choice} for choice in dist.choices
                          if choice != params[name]]
            elif getattr(dist, "step", None) is not None:  # ordered: one step either way
                for value in (params[name] - dist.step, params[name] + dist.step):  # type: ignore[attr-defined]
                    if dist.low - 1e-9 <= value <= dist.high + 1e-9:  # type: ignore[attr-defined]
                        found.append(params | {name: type(params[name])(round(value, 10))})
        return found

    def _candidate(self, params: dict[str, Any]) -> tuple[Hashable, np.ndarray]:
        key = tuple(sorted(params.items()))
        if key not in self._candidates:
            assert self._encoder is not None
            candidate = self.evaluator.suggest(optuna.trial.FixedTrial(params))
            canonical = self.evaluator.parameters(candidate) or params
            self._candidates[key] = (candidate, self._encoder.encode(canonical))
        return self._candidates[key]

    def _ranked_pool(self) -> list[tuple[Hashable, dict[str, Any], dict[str, float]]]:
        """Unseen candidates, best acquisition first, each with its predicted figures."""
        policy = self.policy
        drafts = self._draw(policy.pool_size)
        best = sorted(self._feasible_evaluated, key=lambda item: -item[2])[:policy.neighbours_of]
        for _candidate, params, _accuracy in best:
            drafts += self._neighbours(params)
        pool: dict[Hashable, dict[str, Any]] = {}
        for params in drafts:
            candidate, _encoding = self._candidate(params)
            if candidate not in self._seen and candidate not in pool:
                pool[candidate] = self.evaluator.parameters(candidate) or params
        if not pool:
            return []
        return self._rank(list(pool), pool)

    def _rank(self, candidates: list[Hashable], pool: dict[Hashable, dict[str, Any]]
              ) -> list[tuple[Hashable, dict[str, Any], dict[str, float]]]:
        """Candidates, best acquisition first, each with its params and predicted figures."""
        policy = self.policy
        assert self._encoder is not None
        onehot = np.array([self._candidate(pool[c])[1] for c in candidates])
        predicted: list[dict[str, float]] = [{} for _ in candidates]
        feasible_odds = np.ones(len(candidates))
        for budget in self.budgets:
            predictor = self._predictors.get(budget.figure)
            if predictor is None or not predictor.ready:
                continue
            values = predictor.predict(onehot)
            odds = predictor.probability_within(onehot, budget)
            feasible_odds *= odds
            for row, (value, p) in enumerate(zip(values, odds)):
                predicted[row][budget.figure] = float(value)
                predicted[row][f"{budget.figure}_probability_within"] = float(p)
        # only candidates that may fit are scored (and have their proxies computed)
        plausible = np.flatnonzero(feasible_odds >= policy.min_feasible_odds)
        if len(plausible) == 0:
            plausible = np.argsort(-feasible_odds)[:1]
        evaluated = [c for c, _p, _a in self._feasible_evaluated]
        # proxies once the predictors can say which candidates may fit (the frontier's
        # candidates fit statically already: few, and worth their proxies at once)
        use_proxies = policy.use_proxies and (policy.acquisition == "frontier" or all(
            p.ready for p in self._predictors.values()))
        proxies = proxy_matrix([self.evaluator.proxies(c) for c in
                                [candidates[i] for i in plausible] + evaluated]) \
            if use_proxies else np.zeros((len(plausible) + len(evaluated), 0))

        score = np.zeros(len(candidates))
        if len(self._feasible_evaluated) < policy.startup_evaluations:
            # start: chance until a feasible candidate is known, then the proxies' vote over
            # the plausible ones, weighed by the feasibility odds
            prior = proxy_vote(proxies[:len(plausible)]) if proxies.shape[1] else \
                self._rng.random(len(plausible))
            score[plausible] = (prior / max(1.0, prior.max())) * feasible_odds[plausible]
        else:
            features = np.hstack([np.vstack([onehot[plausible],
                                             [self._encoder.encode(p) for _c, p, _a in
                                              self._feasible_evaluated]]), proxies])
            if self._model is None:
                self._model = AccuracyModel(self._encoder.width)
            model = self._model
            accuracy = np.array([a for _c, _p, a in self._feasible_evaluated])
            model.fit(features[len(plausible):], accuracy)
            mean, std = model.predict(features[:len(plausible)])
            score[plausible] = expected_improvement(mean, std, accuracy.max()) * \
                feasible_odds[plausible]
        keep = set(plausible.tolist())
        order = [i for i in np.argsort(-score, kind="stable") if i in keep]
        return [(candidates[i], pool[candidates[i]], predicted[i]) for i in order]

    # --- the frontier ---------------------------------------------------------------------

    def _plain_candidate(self, params: dict[str, Any]) -> Hashable:
        """The candidate of parameters, before the space's encoding is known."""
        key = tuple(sorted(params.items()))
        if key in self._candidates:
            return self._candidates[key][0]
        return self.evaluator.suggest(optuna.trial.FixedTrial(params))

    def _fits_statically(self, candidate: Hashable) -> bool:
        """Within every budget the evaluator knows exactly without the device (cached)."""
        if candidate not in self._static:
            figures = self.evaluator.static_figures(candidate)
            self._static[candidate] = all(b.met(figures[b.figure]) for b in self.budgets
                                          if b.figure in figures)
        return self._static[candidate]

    def _ladders(self) -> list[list[dict[str, Any]]]:
        if self._ladder_cache is None:
            self._ladder_cache = self.evaluator.ladders()
        return self._ladder_cache

    def _proxy_order(self, candidates: list[Hashable]) -> np.ndarray:
        """The proxies' vote over these candidates (0 for all where there are none)."""
        return proxy_vote(proxy_matrix([self.evaluator.proxies(c) for c in candidates])) \
            if candidates else np.zeros(0)

    def _ladder_start(self) -> dict[str, Any] | None:
        """The next candidate to try on the ladders: on each, the first one not yet found
        infeasible that fits statically; of those, the proxies' favourite (the first ladder's
        on a tie). None: a rung was evaluated and met every budget (the frontier is found; a
        user's own candidates do not count), no ladder, or every one exhausted."""
        starts: list[tuple[dict[str, Any], Hashable]] = []
        feasible = {candidate for candidate, _params, _accuracy in self._feasible_evaluated}
        for ladder in self._ladders():
            for params in ladder:
                candidate = self._plain_candidate(params)
                if candidate in feasible:
                    return None
                if candidate in self._seen:  # measured or evaluated, and not feasible
                    continue
                if self._fits_statically(candidate):
                    starts.append((params, candidate))
                    break
        if not starts:
            return None
        vote = self._proxy_order([c for _p, c in starts])
        return starts[int(np.argmax(vote))][0]

    def _exchanges(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Moves from ``params``: every one-parameter change, and budget moved between two
        ordered parameters (one up, another down, each by 1..exchange_steps steps)."""
        assert self._distributions is not None
        found = self._neighbours(params)
        ordered = [(name, dist) for name, dist in self._distributions.items()
                   if getattr(dist, "step", None) is not None]
        reach = range(1, self.policy.exchange_steps + 1)
        for up, up_dist in ordered:
            for down, down_dist in ordered:
                if up == down:
                    continue
                for a in reach:
                    for b in reach:
                        high = params[up] + a * up_dist.step  # type: ignore[attr-defined]
                        low = params[down] - b * down_dist.step  # type: ignore[attr-defined]
                        if high <= up_dist.high + 1e-9 and low >= down_dist.low - 1e-9:  # type: ignore[attr-defined]
                            found.append(params | {up: type(params[up])(round(high, 10)),
                                                   down: type(params[down])(round(low, 10))})
        return found

    def _best_exchange(self) -> tuple[dict[str, Any], dict[str, float]] | None:
        """The best unseen move from the best evaluated candidates that fits statically:
        ranked as the model pool is (proxies' vote or expected improvement, times the odds of
        fitting the measured budgets)."""
        best = sorted(self._feasible_evaluated, key=lambda item: -item[2])[:self.policy.neighbours_of]
        moves: dict[Hashable, dict[str, Any]] = {}
        for _candidate, params, _accuracy in best:
            for move in self._exchanges(params):
                candidate, _encoding = self._candidate(move)
                if candidate not in self._seen and candidate not in moves and \
                        self._fits_statically(candidate):
                    moves[candidate] = self.evaluator.parameters(candidate) or move
        if not moves:
            return None
        ranked = self._rank(list(moves), moves)
        return ranked[0][1], ranked[0][2]
