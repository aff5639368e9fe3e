"""Hardware-first screening: noise-aware budget decisions and a per-device figure predictor.

A measured figure whose 95% interval contains the budget cannot be called feasible or
infeasible yet: the candidate is measured again with more rounds (doubling, up to a cap),
and every decision records its rounds. That interval comes from the rounds inside one
measurement, so it misses what moves between measurements minutes apart (a shared machine's
load, clocks, heat): on a 2-core VM one model measured p90 0.084 to 0.163 ms from one
measurement to the next, each with a narrow interval. Given a ``BetweenMeasurements`` spread,
a figure that spread puts near its budget is measured again as separate measurements (pairs,
up to a cap), and the median measurement decides. The spread is learnt from the study's own
repeated measurements of the same model, shrunk towards a stated prior until there are some.
A predictor trained on the study's own
measurements may skip measuring a candidate predicted far over budget; what it predicts
is stored as a prediction, never as a measurement, and its rank accuracy on candidates
measured afterwards is kept as the study goes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

from hwnas.search.evaluator import Budget, Evaluator, HardwareReport


@dataclasses.dataclass(frozen=True)
class BudgetDecision:
    """Whether a figure meets its budget (a ceiling, or a floor where higher is better: its
    interval above the floor is feasible, below it infeasible, holding it unsettled)."""

    figure: str
    limit: float
    value: float
    ci95: tuple[float, float]
    rounds: int  # rounds behind the deciding measurement
    extra_rounds: int  # rounds spent re-measuring because the interval held the budget
    feasible: bool
    settled: bool  # False: the interval still held the budget at the round cap
    # every separate measurement's value, in the order taken (the median one decided), and
    # the spread between measurements (sd of log values) that the decision allowed for
    measured: tuple[float, ...] = ()
    between_sd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ci95": list(self.ci95), "measured": list(self.measured)}


@dataclasses.dataclass(frozen=True)
class BetweenMeasurements:
    """How far separate measurements of one model scatter: the sd of log values, pooled over
    models measured more than once, shrunk towards ``prior`` (worth ``prior_weight`` degrees
    of freedom) so that a study's first decisions are careful, not blind."""

    groups: tuple[tuple[float, ...], ...] = ()  # one model's separate measurements each
    prior: float = 0.10
    prior_weight: float = 2.0

    def with_group(self, values: Sequence[float]) -> "BetweenMeasurements":
        values = tuple(float(v) for v in values if v > 0 and math.isfinite(v))
        if len(values) < 2:
            return self
        return dataclasses.replace(self, groups=(*self.groups, values))

    @property
    def degrees_of_freedom(self) -> int:
        return sum(len(g) - 1 for g in self.groups)

    @property
    def sd(self) -> float:
        squares = sum(float(((np.log(g) - np.log(g).mean()) ** 2).sum()) for g in self.groups)
        return math.sqrt((self.prior_weight * self.prior ** 2 + squares)
                         / (self.prior_weight + self.degrees_of_freedom))

    def ambiguous(self, values: Sequence[float], limit: float) -> bool:
        """Whether the budget lies within the 95% interval of the median of ``values``."""
        n = len(values)
        half = Z95 * self.sd * MEDIAN_SD.get(n, math.sqrt(math.pi / 2)) / math.sqrt(n)
        centre = math.log(float(np.median(values)))
        return centre - half <= math.log(limit) <= centre + half


Z95 = 1.959964
# the sd of the median of n normal draws over that of their mean (sqrt(pi/2) for large n)
MEDIAN_SD = {1: 1.0, 2: 1.0, 3: 1.160, 5: 1.197, 7: 1.214}


def _exact(report: HardwareReport, figure: str) -> bool:
    low, high = report.figure(figure).ci95
    return low == high


def _ambiguous(report: HardwareReport, budget: Budget) -> bool:
    low, high = report.figure(budget.figure).ci95
    return low <= budget.limit <= high and low < high


def screen(evaluator: Evaluator, candidate: Hashable, budgets: Sequence[Budget],
           max_rounds: int, between: Mapping[str, BetweenMeasurements] | None = None,
           max_separate: int = 5, separate_rounds: int | None = None
           ) -> tuple[HardwareReport, tuple[BudgetDecision, ...], tuple[HardwareReport, ...]]:
    """Measure; while some figure's interval holds its budget, measure again with twice the
    rounds (up to ``max_rounds``). Then, for the figures that ``between`` knows (a spread
    per figure name), while the spread between measurements puts the budget within reach of
    the median measurement, measure twice more (up to ``max_separate`` measurements); the
    median one decides; they take ``separate_rounds`` rounds each (None: the default): what
    they are for is the spread between measurements, which more rounds do not shrink.
    Returns the deciding report, the decisions and every other report taken, in order."""
    reports = [evaluator.measure(candidate)]
    while True:
        unsure = [b for b in budgets if _ambiguous(reports[-1], b)]
        rounds = max((reports[-1].figure(b.figure).rounds for b in unsure), default=0)
        if not unsure or rounds >= max_rounds:
            break
        reports.append(evaluator.measure(candidate, rounds=min(max_rounds, 2 * rounds)))
    # the measurements apart: the last of the rounds above, and the ones taken from here
    drifting = [b for b in budgets if between and b.figure in between
                and not _exact(reports[-1], b.figure)]
    separate = [reports[-1]]

    def unsure_apart() -> list[Budget]:
        return [b for b in drifting if between[b.figure].ambiguous(
            [r.figure(b.figure).value for r in separate], b.limit)]

    while unsure_apart() and len(separate) + 2 <= max_separate:
        separate += [evaluator.measure(candidate, separate_rounds),
                     evaluator.measure(candidate, separate_rounds)]
        reports += separate[-2:]
    # the median measurement of the separate ones (by the drifting figures' distance to
    # their budgets); an odd count, so it is one real measurement, never an average
    final = sorted(separate, key=lambda r: sum(
        b.log_excess(r.figure(b.figure).value) for b in drifting))[len(separate) // 2]
    still_unsure = {b.figure for b in unsure_apart()}
    extra = sum(max(f.rounds for f in r.figures) for r in reports[1:])
    decisions = tuple(BudgetDecision(
        b.figure, b.limit, final.figure(b.figure).value, final.figure(b.figure).ci95,
        final.figure(b.figure).rounds, extra, b.met(final.figure(b.figure).value),
        b.figure not in still_unsure if b in drifting else not _ambiguous(final, b),
        tuple(r.figure(b.figure).value for r in reports),
        between[b.figure].sd if b in drifting else None) for b in budgets)
    return final, decisions, tuple(r for r in reports if r is not final)


@dataclasses.dataclass(frozen=True)
class RankAccuracy:
    """How well predictions ranked candidates measured after they were predicted."""

    pairs: int
    spearman: float | None
    kendall: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FigurePredictor:
    """Ridge regression of a figure on the candidate's features, fit on this study's
    measurements of one device. Latency and energy are close to additive over operations,
    so a linear model of one-hot parameters ranks them well (not in log space: a cell that
    computes nothing measures ~0.01 ms, and its log would dominate the fit)."""

    def __init__(self, figure: str, min_measurements: int = 20, ridge: float = 1.0) -> None:
        self.figure, self.min_measurements, self.ridge = figure, min_measurements, ridge
        self._x: list[np.ndarray] = []
        self._y: list[float] = []
        self._weights: np.ndarray | None = None
        self.residual_std = math.inf
        self._predicted: list[float] = []  # predictions made before the measurement came
        self._measured: list[float] = []

    @property
    def ready(self) -> bool:
        return self._weights is not None

    def add(self, features: np.ndarray, value: float) -> None:
        if self.ready:  # scored before it was refit on this very measurement
            self._predicted.append(float(self.predict(features[None, :])[0]))
            self._measured.append(value)
        self._x.append(features)
        self._y.append(value)
        if len(self._y) >= self.min_measurements:
            self._fit()

    def _fit(self) -> None:
        x = np.column_stack([np.ones(len(self._x)), np.asarray(self._x)])
        y = np.asarray(self._y)
        penalty = self.ridge * np.eye(x.shape[1])
        penalty[0, 0] = 0.0
        inverse = np.linalg.pinv(x.T @ x + penalty)
        self._weights = inverse @ x.T @ y
        # leave-one-out residuals of ridge regression, in closed form: honest error bars
        leverage = np.einsum("ij,jk,ik->i", x, inverse, x)
        residuals = (y - x @ self._weights) / np.maximum(1e-6, 1 - leverage)
        self.residual_std = float(max(1e-9, np.sqrt(np.mean(residuals ** 2))))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The figure predicted for each row of ``features``."""
        assert self._weights is not None
        return self._weights[0] + features @ self._weights[1:]

    def probability_within(self, features: np.ndarray, budget: Budget) -> np.ndarray:
        """The odds that each row's figure meets ``budget`` (at most a ceiling, at least a
        floor)."""
        if not self.ready:
            return np.ones(len(features))
        z = (budget.limit - self.predict(features)) / self.residual_std
        return stats.norm.sf(z) if budget.higher_is_better else stats.norm.cdf(z)

    def rank_accuracy(self) -> RankAccuracy:
        n = len(self._predicted)
        if n < 3 or len(set(self._measured)) < 2:
            return RankAccuracy(n, None, None)
        return RankAccuracy(n, float(stats.spearmanr(self._predicted, self._measured)[0]),
                            float(stats.kendalltau(self._predicted, self._measured)[0]))
