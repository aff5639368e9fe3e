"""The engine's policy as an Optuna sampler: ``search.sampler: engine``.

It proposes each trial's parameters from the study's own books (books.py) of the trial's
device pool, through its acquisition strategies (acquisition.py), tried in order: the
frontier's ladder start and budget exchanges, then the model-ranked pool; a strategy that
has nothing to propose passes to the next, and the base sampler (random by default) fills
whatever is left (the first trial of a space whose parameters are learnt from its trials, a
parameter outside the engine's space). ``acquisition="sampler"`` hands every proposal to the
base sampler (TPE, GP, random): the pipeline's screening and bookkeeping stay the policy's.

Because it is a sampler, every way of running a study runs it: ``study.optimize`` with one
thread per device of a pool, several ``hwnas worker`` processes on one storage (each reads
what the others finished from the study), and retries of trials a dead controller left.
A candidate another trial holds (this controller's, or another's running or waiting trial:
books.py ``claimed``) is never proposed again. A proposal is claimed in the study before the
trial runs (the trial's ``engine_claim`` system attribute: the candidate's record, written,
then read back against
every other running trial): two controllers that propose one candidate at the same instant
(they finish together and propose together, as two workers do after a twin) find each
other's claim, and one steps aside and proposes again; only if that fails (CLAIM_TRIES) do
they meet in the pipeline, where one measures it and the other records a copy (twins.py
``finished_twin``). Without claims two workers ran in lock step: every proposal twice.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Hashable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hwnas.search.acquisition import BudgetExchange, LadderStart, ModelPool, Ranker
from hwnas.search.books import Books, PoolBooks, trial_pool
from hwnas.search.evaluator import Evaluator
from hwnas.search.policy import Policy

CLAIM = "engine_claim"  # a trial's system attribute: its proposal's parameters (JSON)
CLAIM_TRIES = 4  # proposals tried before a clash is left to the pipeline (a copy)
CLAIM_WAIT_S = 0.3  # how long an earlier trial gives a later one to see its claim


def claim_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class EngineSampler(BaseSampler):
    def __init__(self, evaluator: Evaluator, policy: Policy = Policy(), seed: int = 0,
                 base: BaseSampler | None = None, candidate_cache: dict | None = None) -> None:
        """``candidate_cache``: params -> (candidate, encoding), shareable between samplers on
        the same evaluator and space (a benchmark's seeds)."""
        self.evaluator, self.policy, self.seed = evaluator, policy, seed
        self.base = base or RandomSampler(seed=seed)
        self.books = PoolBooks(lambda pool: Books(evaluator, policy, evaluator.budgets_for(pool),
                                                  pool))
        self._lock = threading.RLock()
        self._rankers: dict[str | None, tuple[Ranker, list[Any]]] = {}
        self._cache = candidate_cache
        # the evaluator's parameters, if it knows them before any trial: fixed, asked once
        self._space = evaluator.distributions()
        self._predicted: dict[int, dict[str, float]] = {}
        self._proposed_by: dict[int, str] = {}  # trial -> the strategy that proposed it
        self._held: dict[int, tuple[str | None, Hashable]] = {}  # trial -> (pool, candidate)
        self._rng: np.random.Generator | None = None
        self.exhausted = False  # no strategy had a candidate left

    # --- Optuna's sampler contract ------------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        if self.policy.acquisition == "sampler":
            return self.base.infer_relative_search_space(study, trial)
        books = self._books(study, trial)
        return dict(books.distributions or {})

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self.policy.acquisition == "sampler":
            return self.base.sample_relative(study, trial, search_space)
        with self._lock:
            for _ in range(CLAIM_TRIES):
                proposal = self._propose(study, trial)
                if proposal is None:
                    # nothing learnt yet: the base sampler proposes; else every candidate is
                    # taken
                    self.exhausted = bool(search_space) and not self._waiting(study)
                    return {}
                params = self._record(trial, proposal)
                if self._claim(study, trial, params):
                    break
            return {name: value for name, value in params.items() if name in search_space}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Where the evaluator cannot name its parameters before a trial ran, a first
        proposal (e.g. a ladder's start) is fixed on the trial, as an enqueued one is; every
        other proposal is relative, made once the trial knows its device pool."""
        self.base.before_trial(study, trial)
        if self.policy.acquisition == "sampler" or trial.system_attrs.get("fixed_params") or \
                self._space is not None:
            return
        with self._lock:
            if self._books(study, trial).distributions is not None:
                return
            proposal = self._propose(study, trial)
            if proposal is not None:
                params = self._record(trial, proposal)
                study._storage.set_trial_system_attr(trial._trial_id, "fixed_params", params)
                trial.system_attrs["fixed_params"] = params  # the trial reads it from here

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)
        with self._lock:
            held = self._held.pop(trial.number, None)
            self._predicted.pop(trial.number, None)
            self._proposed_by.pop(trial.number, None)
            if held is not None:
                self._ranker(held[0], None)[0].held.discard(held[1])

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = None

    # --- what the pipeline asks ----------------------------------------------------------------

    def books_of(self, pool: str | None, study: optuna.Study) -> Books:
        books = self.books.of(pool, study)
        books.learn_distributions(self._space or {})
        return books

    def predicted(self, trial: optuna.Trial, candidate: Hashable, pool: str | None
                  ) -> dict[str, float]:
        """The figures predicted for a trial's candidate (those its proposal was ranked on, or
        the predictors' now, for a trial the engine did not propose)."""
        with self._lock:
            if trial.number in self._predicted:
                return self._predicted[trial.number]
            books = self.books_of(pool, trial.study)
            if books.encoder is None:
                return {}
            return books.predict(candidate, trial.params)

    def proposed_by(self, trial: optuna.Trial) -> str:
        """Which part of the policy proposed a trial's candidate (provenance for the record)."""
        with self._lock:
            if trial.number in self._proposed_by:
                return self._proposed_by[trial.number]
        system = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        if system.get("fixed_params"):
            return "enqueued"  # the user's, or a retry of a trial whose controller died
        return "base_sampler"

    def summary(self) -> dict[str, Any]:
        """What the study keeps of the policy: its settings and, per device pool, its books."""
        pools = {str(b.pool): b.summary() for b in self.books.all() if b.seen}
        single = next(iter(pools.values())) if len(pools) == 1 else {}
        return {**single, "pools": pools, "policy": {k: getattr(self.policy, k) for k in
                                                       self.policy.__dataclass_fields__}}

    # --- proposing -----------------------------------------------------------------------------

    def _books(self, study: optuna.Study, trial: FrozenTrial) -> Books:
        return self.books_of(trial_pool(trial), study)

    def _ranker(self, pool: str | None, study: optuna.Study | None) -> tuple[Ranker, list[Any]]:
        if pool not in self._rankers:
            if self._rng is None:
                trials = len(study.get_trials(deepcopy=False)) if study is not None else 0
                self._rng = np.random.default_rng(self.seed + trials)
            books = self.books.of(pool)
            strategies: list[Any] = [ModelPool()]
            if self.policy.acquisition == "frontier":
                strategies = [LadderStart(), BudgetExchange(), *strategies]
            self._rankers[pool] = (Ranker(self.evaluator, books, self._rng, self._cache),
                                   strategies)
        return self._rankers[pool]

    def _record(self, trial: FrozenTrial,
                proposal: tuple[dict[str, Any], dict[str, float] | None, str]
                ) -> dict[str, Any]:
        """Hold the proposed candidate until the trial ends; keep its predictions."""
        params, predicted, strategy = proposal
        self._proposed_by[trial.number] = strategy
        pool = trial_pool(trial)
        ranker = self._ranker(pool, None)[0]
        candidate = ranker.plain_candidate(params)
        ranker.held.add(candidate)
        self._held[trial.number] = (pool, candidate)
        if predicted is not None:
            self._predicted[trial.number] = predicted
        return params

    def _claim(self, study: optuna.Study, trial: FrozenTrial, params: dict[str, Any]) -> bool:
        """Claim the proposal in the study; False: another running trial of this pool holds
        the same claim and keeps it, or one finished with it since this controller's books
        last read the study (this trial proposes again; the candidate is held)."""
        # the candidate, not the parameters: equivalent encodings (a criterion at a global
        # ratio of 0) are one model, and two of them clashed on CI
        key = claim_key(self.evaluator.describe(self._held[trial.number][1]))
        study._storage.set_trial_system_attr(trial._trial_id, CLAIM, key)
        pool = trial_pool(trial)
        others = [t for t in study.get_trials(deepcopy=False, states=(
                      TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE))
                  if t.number != trial.number and trial_pool(t) in (pool, None)
                  and t.system_attrs.get(CLAIM) == key]
        if not others:
            return True
        # a trial that finished with it (another worker's, between this one's reading of the
        # study and its claim) measured it: this one would only copy it (CI, under load)
        if not any(t.number < trial.number or t.state == TrialState.COMPLETE for t in others):
            # only later trials hold it: each of them steps aside once it reads this claim
            time.sleep(CLAIM_WAIT_S)
            if not any(study._storage.get_trial_system_attrs(t._trial_id).get(CLAIM) == key
                       for t in others):
                return True
        self.books.of(pool).claimed.add(self._held[trial.number][1])
        return False

    @staticmethod
    def _waiting(study: optuna.Study) -> bool:
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _propose(self, study: optuna.Study, trial: FrozenTrial
                 ) -> tuple[dict[str, Any], dict[str, float] | None, str] | None:
        books = self._books(study, trial)
        ranker, strategies = self._ranker(trial_pool(trial), study)
        waiting = self._waiting(study)
        with books.lock:  # the pipeline's threads take finished trials into the same books
            for strategy in strategies:
                if waiting and not isinstance(strategy, ModelPool):
                    continue  # a user's enqueued candidates go first: the frontier waits
                if isinstance(strategy, ModelPool) and books.encoder is None:
                    continue
                proposal = strategy.propose(ranker)
                if proposal is not None:
                    return (*proposal, strategy.name)
        return None
