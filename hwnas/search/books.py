"""The policy's books for one device pool, kept from the study itself.

Whatever a controller, a thread of it or another worker on the same storage finished is
read back from the study: what was seen, measured and evaluated, the spread between
separate measurements of one model, and the per-device figure predictors. Nothing lives
only in memory, so a resumed search or a worker that joins later knows what the others
paid for.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hwnas.policy_record import PolicyRecord
from hwnas.records import TrialOutcome
from hwnas.search.evaluator import Budget, Evaluator
from hwnas.search.policy import STAGE_EVALUATED, STAGE_SKIPPED, Evaluation, Policy
from hwnas.search.screening import BetweenMeasurements, FigurePredictor
from hwnas.search.surrogate import ParameterEncoder


def trial_pool(trial: FrozenTrial) -> str | None:
    """The device pool a trial was measured on (None: an evaluator without pools)."""
    return TrialOutcome.pool_and_finalized(trial.user_attrs)[0]


class Books:
    """What the study knows of the candidates of one device pool (``pool`` None: every trial)."""

    def __init__(self, evaluator: Evaluator, policy: Policy, budgets: tuple[Budget, ...],
                 pool: str | None = None) -> None:
        self.evaluator, self.policy, self.budgets, self.pool = evaluator, policy, budgets, pool
        self.lock = threading.RLock()
        self.seen: dict[Hashable, FrozenTrial] = {}
        self.evaluations: list[Evaluation] = []
        self.feasible: list[tuple[Hashable, dict[str, Any], float]] = []
        self.predictors = {b.figure: FigurePredictor(b.figure, policy.predictor_min_measurements)
                           for b in budgets} if policy.predictor else {}
        # figure -> trial -> that model's separate measurements (screened and deployed)
        self.apart: dict[str, dict[int, tuple[float, ...]]] = {b.figure: {} for b in budgets}
        self.measurements = self.rounds = self.skipped = 0
        # candidates other controllers' trials hold now (running, or enqueued to run)
        self.claimed: set[Hashable] = set()
        self.distributions: dict[str, BaseDistribution] | None = None
        self.encoder: ParameterEncoder | None = None
        self._read: set[int] = set()

    # --- reading the study ---------------------------------------------------------------

    def refresh(self, study: optuna.Study) -> None:
        """Take in every trial finished since the last look (in trial order)."""
        with self.lock:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                  TrialState.PRUNED)):
                if trial.number in self._read:
                    continue
                self._read.add(trial.number)
                record = PolicyRecord.from_attributes(trial.user_attrs)
                if record.stage is None or \
                        TrialOutcome.pool_and_finalized(trial.user_attrs)[1] is not None:
                    continue  # not the pipeline's, or a longer fine-tune (`hwnas finalize`) of one
                if self.pool is not None and trial_pool(trial) not in (self.pool, None):
                    continue  # another pool's figures: another device
                self._take(trial, record)
            self.claimed = self._claims(study)

    def _claims(self, study: optuna.Study) -> set[Hashable]:
        """The candidates of this pool's running and waiting trials: another worker's proposal
        is not proposed again here (two that propose one at the same instant still meet in
        the pipeline, where one measures and the other copies)."""
        found = set()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                              TrialState.WAITING)):
            # (a proposal not yet written into its parameters is held by the engine's claim:
            # proposer.py)
            params = trial.params or trial.system_attrs.get("fixed_params") or {}
            if not params or (self.pool is not None and trial_pool(trial) not in (self.pool, None)):
                continue
            try:
                found.add(self.evaluator.suggest(optuna.trial.FixedTrial(params)))
            except (ValueError, KeyError):  # its parameters are still being written
                continue
        return found

    def learn_distributions(self, distributions: dict[str, BaseDistribution]) -> None:
        if self.distributions is None and distributions:
            self.distributions = dict(distributions)
            self.encoder = ParameterEncoder(distributions)

    def _take(self, trial: FrozenTrial, record: PolicyRecord) -> None:
        candidate = self.evaluator.suggest(optuna.trial.FixedTrial(trial.params))
        self.learn_distributions(trial.distributions)
        first = candidate not in self.seen  # a later trial of it is a copy, not new knowledge
        self.seen.setdefault(candidate, trial)
        self.measurements += record.measurements or 0
        self.rounds += record.measurement_rounds or 0
        self.skipped += record.stage == STAGE_SKIPPED
        for figure, values in (record.separate_measurements or {}).items():
            if figure in self.apart:
                self.apart[figure][trial.number] = tuple(values)
        screened = record.hardware_screened or record.hardware
        if screened:  # what the predictors learn from: the figures before training
            self.teach(candidate, trial.params, screened["figures"])
        if record.stage == STAGE_EVALUATED and trial.values and first:
            feasible = all(v <= 0 for v in trial.constraints.values())
            self.evaluations.append(Evaluation(trial.number, candidate, trial.values[0], feasible))
            if feasible:
                self.feasible.append((candidate, self.parameters(candidate, trial.params),
                                      trial.values[0]))

    # --- what the policy reads ---------------------------------------------------------------

    def parameters(self, candidate: Hashable, params: dict[str, Any]) -> dict[str, Any]:
        return self.evaluator.parameters(candidate) or dict(params)

    def features(self, candidate: Hashable, params: dict[str, Any]) -> np.ndarray:
        """The figure predictors' features: the (canonical) parameters alone. Latency and
        energy are close to additive over them."""
        assert self.encoder is not None
        return self.encoder.encode(self.parameters(candidate, params))

    def teach(self, candidate: Hashable, params: dict[str, Any],
              figures: dict[str, dict[str, Any]]) -> None:
        if not self.predictors or self.encoder is None:
            return
        features = self.features(candidate, params)
        for name, predictor in self.predictors.items():
            if name in figures:
                predictor.add(features, figures[name]["value"])

    def between(self) -> dict[str, BetweenMeasurements]:
        """The spread between separate measurements of one model, per budgeted figure."""
        if self.policy.between_prior is None:
            return {}
        with self.lock:  # another thread's refresh may be adding to it
            return {figure: BetweenMeasurements(tuple(g for g in groups.values() if len(g) > 1),
                                                self.policy.between_prior)
                    for figure, groups in self.apart.items()}

    def predict(self, candidate: Hashable, params: dict[str, Any]) -> dict[str, float]:
        """The predictors' figures for a candidate, and the odds of each fitting its budget."""
        predicted: dict[str, float] = {}
        if not self.policy.screening or self.encoder is None:
            return predicted
        with self.lock:
            return self._predict(candidate, params, predicted)

    def _predict(self, candidate: Hashable, params: dict[str, Any],
                 predicted: dict[str, float]) -> dict[str, float]:
        for budget in self.budgets:
            predictor = self.predictors.get(budget.figure)
            if predictor is not None and predictor.ready:
                features = self.features(candidate, params)[None, :]
                predicted[budget.figure] = float(predictor.predict(features)[0])
                predicted[f"{budget.figure}_probability_within"] = float(
                    predictor.probability_within(features, budget)[0])
        return predicted

    def skip(self, predicted: dict[str, float]) -> bool:
        """Skip measuring only where every guard holds: the predictor has shown its rank
        accuracy on candidates measured after it predicted them (Kendall tau >= the policy's
        floor over >= 10 of them), the figure is predicted at least (1 + margin) over its
        budget, and the odds that it fits are below ``skip_probability``."""
        with self.lock:
            return self._skip(predicted)

    def _skip(self, predicted: dict[str, float]) -> bool:
        for budget in self.budgets:
            predictor = self.predictors.get(budget.figure)
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

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return self._summary()

    def _summary(self) -> dict[str, Any]:
        return {"evaluations": len(self.evaluations), "measurements": self.measurements,
                "measurement_rounds": self.rounds, "skipped_by_prediction": self.skipped,
                "predictor_rank_accuracy": self.rank_accuracy(),
                "between_measurements": {
                    n: {"sd_log": s.sd, "degrees_of_freedom": s.degrees_of_freedom,
                        "prior_sd_log": s.prior} for n, s in self.between().items() if s.groups}}

    def rank_accuracy(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {n: p.rank_accuracy().to_dict() for n, p in self.predictors.items()}


class PoolBooks:
    """Books per device pool: a fleet's devices differ, so do their figures and budgets."""

    def __init__(self, make: Callable[[str | None], Books]) -> None:
        self._make = make
        self._books: dict[str | None, Books] = {}
        self._lock = threading.Lock()

    def of(self, pool: str | None, study: optuna.Study | None = None) -> Books:
        with self._lock:
            books = self._books.get(pool)
            if books is None:
                books = self._books[pool] = self._make(pool)
        if study is not None:
            books.refresh(study)
        return books

    def all(self) -> list[Books]:
        with self._lock:
            return list(self._books.values())
