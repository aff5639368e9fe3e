"""The engine's acquisition strategies: composable parts of its sampler (proposer.py).

Each strategy proposes the next trial's parameters from a pool's books, or passes (None)
to the next one:

- ``LadderStart`` (frontier): the first candidate of each ladder that fits the budgets
  statically (the exported bytes' size, computed without the device) and was not found
  infeasible; the proxies' favourite of those. Passes once a rung met every budget.
- ``BudgetExchange`` (frontier): from the best evaluated candidates, budget moved between
  ordered parameters (one up and another down by up to ``exchange_steps`` steps) or one
  parameter changed, keeping only the moves that still fit statically.
- ``ModelPool``: random draws plus every one-parameter change of the best candidates, scored
  by the proxies' vote (start-up) or the accuracy model's expected improvement, times the
  odds of fitting the measured budgets; acted on best first, ranked again after an
  evaluation or ``rerank_after`` proposals.

Moves and pool candidates are ranked alike (``Ranker.rank``). Candidates another trial holds
(running, or proposed and not yet started) are never proposed again.
"""

from __future__ import annotations

import math
from typing import Any, Hashable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

from hwnas.search.books import Books
from hwnas.search.evaluator import Evaluator
from hwnas.search.surrogate import AccuracyModel, expected_improvement, proxy_matrix, proxy_vote

Proposal = tuple[dict[str, Any], "dict[str, float] | None"]  # params, predicted figures


class Ranker:
    """What every strategy of one pool shares: candidates by parameters, static fits, the
    accuracy model and the random draws."""

    def __init__(self, evaluator: Evaluator, books: Books, rng: np.random.Generator,
                 candidate_cache: dict | None = None) -> None:
        self.evaluator, self.books, self.rng = evaluator, books, rng
        self.candidates: dict[tuple[tuple[str, Any], ...], tuple[Hashable, np.ndarray]] = \
            candidate_cache if candidate_cache is not None else {}
        self._static: dict[Hashable, bool] = {}  # candidate -> fits the budgets statically
        self._model: AccuracyModel | None = None
        self.held: set[Hashable] = set()  # candidates of trials running or about to

    def taken(self, candidate: Hashable) -> bool:
        return candidate in self.books.seen or candidate in self.held or \
            candidate in self.books.claimed

    def candidate(self, params: dict[str, Any]) -> tuple[Hashable, np.ndarray]:
        key = tuple(sorted(params.items()))
        if key not in self.candidates:
            encoder = self.books.encoder
            assert encoder is not None
            candidate = self.evaluator.suggest(optuna.trial.FixedTrial(params))
            canonical = self.evaluator.parameters(candidate) or params
            self.candidates[key] = (candidate, encoder.encode(canonical))
        return self.candidates[key]

    def plain_candidate(self, params: dict[str, Any]) -> Hashable:
        """The candidate of parameters, before the space's encoding is known."""
        key = tuple(sorted(params.items()))
        if key in self.candidates:
            return self.candidates[key][0]
        return self.evaluator.suggest(optuna.trial.FixedTrial(params))

    def fits_statically(self, candidate: Hashable) -> bool:
        """Within every budget the evaluator knows exactly without the device (cached)."""
        if candidate not in self._static:
            figures = self.evaluator.static_figures(candidate)
            self._static[candidate] = all(b.met(figures[b.figure]) for b in self.books.budgets
                                          if b.figure in figures)
        return self._static[candidate]

    def proxy_order(self, candidates: list[Hashable]) -> np.ndarray:
        """The proxies' vote over these candidates (0 for all where there are none)."""
        return proxy_vote(proxy_matrix([self.evaluator.proxies(c) for c in candidates])) \
            if candidates else np.zeros(0)

    # --- the pool ---------------------------------------------------------------------------

    def draw(self, count: int) -> list[dict[str, Any]]:
        """Uniform random parameters (numbers uniform in their range, log or not)."""
        distributions = self.books.distributions
        assert distributions is not None
        columns = {}
        for name, dist in distributions.items():
            if isinstance(dist, CategoricalDistribution):
                columns[name] = [dist.choices[i] for i in
                                 self.rng.integers(len(dist.choices), size=count)]
            else:
                low, high = dist.low, dist.high  # type: ignore[attr-defined]
                log = getattr(dist, "log", False)
                u = self.rng.uniform(math.log(low) if log else low,
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

    def neighbours(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        distributions = self.books.distributions
        assert distributions is not None
        found = []
        for name, dist in distributions.items():
            if isinstance(dist, CategoricalDistribution):
                found += [params | {name: choice} for choice in dist.choices
                          if choice != params[name]]
            elif getattr(dist, "step", None) is not None:  # ordered: one step either way
                for value in (params[name] - dist.step, params[name] + dist.step):  # type: ignore[attr-defined]
                    if dist.low - 1e-9 <= value <= dist.high + 1e-9:  # type: ignore[attr-defined]
                        found.append(params | {name: type(params[name])(round(value, 10))})
        return found

    def rank(self, candidates: list[Hashable], pool: dict[Hashable, dict[str, Any]]
             ) -> list[tuple[Hashable, dict[str, Any], dict[str, float]]]:
        """Candidates, best acquisition first, each with its params and predicted figures."""
        books, policy = self.books, self.books.policy
        encoder = books.encoder
        assert encoder is not None
        onehot = np.array([self.candidate(pool[c])[1] for c in candidates])
        predicted: list[dict[str, float]] = [{} for _ in candidates]
        feasible_odds = np.ones(len(candidates))
        for budget in books.budgets:
            predictor = books.predictors.get(budget.figure)
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
        evaluated = [c for c, _p, _a in books.feasible]
        # proxies once the predictors can say which candidates may fit (the frontier's
        # candidates fit statically already: few, and worth their proxies at once)
        use_proxies = policy.use_proxies and (policy.acquisition == "frontier" or all(
            p.ready for p in books.predictors.values()))
        proxies = proxy_matrix([self.evaluator.proxies(c) for c in
                                [candidates[i] for i in plausible] + evaluated]) \
            if use_proxies else np.zeros((len(plausible) + len(evaluated), 0))

        score = np.zeros(len(candidates))
        if len(books.feasible) < policy.startup_evaluations:
            # start: chance until a feasible candidate is known, then the proxies' vote over
            # the plausible ones, weighed by the feasibility odds
            prior = proxy_vote(proxies[:len(plausible)]) if proxies.shape[1] else \
                self.rng.random(len(plausible))
            score[plausible] = (prior / max(1.0, prior.max())) * feasible_odds[plausible]
        else:
            features = np.hstack([np.vstack([onehot[plausible],
                                             [encoder.encode(p) for _c, p, _a in books.feasible]]),
                                  proxies])
            if self._model is None:
                self._model = AccuracyModel(encoder.width)
            accuracy = np.array([a for _c, _p, a in books.feasible])
            self._model.fit(features[len(plausible):], accuracy)
            mean, std = self._model.predict(features[:len(plausible)])
            score[plausible] = expected_improvement(mean, std, accuracy.max()) * \
                feasible_odds[plausible]
        keep = set(plausible.tolist())
        order = [i for i in np.argsort(-score, kind="stable") if i in keep]
        return [(candidates[i], pool[candidates[i]], predicted[i]) for i in order]


class LadderStart:
    name = "ladder_start"

    def __init__(self) -> None:
        self._ladders: list[list[dict[str, Any]]] | None = None

    def propose(self, ranker: Ranker) -> Proposal | None:
        """On each ladder, the first candidate not yet found infeasible that fits statically;
        of those, the proxies' favourite (the first ladder's on a tie). None: a rung was
        evaluated and met every budget (the frontier is found; a user's own candidates do not
        count), no ladder, or every one exhausted."""
        if self._ladders is None:
            self._ladders = ranker.evaluator.ladders()
        starts: list[tuple[dict[str, Any], Hashable]] = []
        feasible = {candidate for candidate, _params, _accuracy in ranker.books.feasible}
        for ladder in self._ladders:
            for params in ladder:
                candidate = ranker.plain_candidate(params)
                if candidate in feasible:
                    return None
                if ranker.taken(candidate):  # measured, evaluated (not feasible) or held
                    continue
                if ranker.fits_statically(candidate):
                    starts.append((params, candidate))
                    break
        if not starts:
            return None
        vote = ranker.proxy_order([c for _p, c in starts])
        return starts[int(np.argmax(vote))][0], None


class BudgetExchange:
    name = "budget_exchange"

    def propose(self, ranker: Ranker) -> Proposal | None:
        """The best unseen move from the best evaluated candidates that fits statically:
        ranked as the model pool is."""
        books = ranker.books
        if not books.feasible or books.distributions is None:
            return None
        best = sorted(books.feasible, key=lambda item: -item[2])[:books.policy.neighbours_of]
        moves: dict[Hashable, dict[str, Any]] = {}
        for _candidate, params, _accuracy in best:
            for move in self.exchanges(ranker, params):
                candidate, _encoding = ranker.candidate(move)
                if not ranker.taken(candidate) and candidate not in moves and \
                        ranker.fits_statically(candidate):
                    moves[candidate] = ranker.evaluator.parameters(candidate) or move
        if not moves:
            return None
        ranked = ranker.rank(list(moves), moves)
        return ranked[0][1], ranked[0][2]

    @staticmethod
    def exchanges(ranker: Ranker, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every one-parameter change, and budget moved between two ordered parameters (one
        up, another down, each by 1..exchange_steps steps)."""
        distributions = ranker.books.distributions
        assert distributions is not None
        found = ranker.neighbours(params)
        ordered = [(name, dist) for name, dist in distributions.items()
                   if getattr(dist, "step", None) is not None]
        reach = range(1, ranker.books.policy.exchange_steps + 1)
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


class ModelPool:
    name = "model_pool"

    def __init__(self) -> None:
        self._queue: list[tuple[Hashable, dict[str, Any], dict[str, float]]] = []
        self._ranked_at = -1  # evaluations when the queue was ranked
        self._taken = 0  # proposals from the queue since

    def propose(self, ranker: Ranker) -> Proposal | None:
        books = ranker.books
        if books.distributions is None:
            return None
        if len(books.evaluations) != self._ranked_at or \
                self._taken >= books.policy.rerank_after or not self._queue:
            # after an evaluation (the model learnt) or a few rejections (the predictor
            # learnt), rank again
            self._queue, self._ranked_at, self._taken = self._ranked(ranker), \
                len(books.evaluations), 0
        while self._queue:
            candidate, params, predicted = self._queue.pop(0)
            if not ranker.taken(candidate):
                self._taken += 1
                return params, predicted
        return None

    def _ranked(self, ranker: Ranker) -> list[tuple[Hashable, dict[str, Any], dict[str, float]]]:
        """Unseen candidates, best acquisition first, each with its predicted figures."""
        books = ranker.books
        drafts = ranker.draw(books.policy.pool_size)
        best = sorted(books.feasible, key=lambda item: -item[2])[:books.policy.neighbours_of]
        for _candidate, params, _accuracy in best:
            drafts += ranker.neighbours(params)
        pool: dict[Hashable, dict[str, Any]] = {}
        for params in drafts:
            candidate, _encoding = ranker.candidate(params)
            if not ranker.taken(candidate) and candidate not in pool:
                pool[candidate] = ranker.evaluator.parameters(candidate) or params
        return ranker.rank(list(pool), pool) if pool else []
