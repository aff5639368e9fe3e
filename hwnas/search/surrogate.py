"""The accuracy model of the feasible region: a Gaussian process over candidate features.

Features are the trial's parameters (one-hot for categorical choices, scaled to [0, 1] for
numbers) and, where the evaluator has them, its zero-cost proxies (standardised). The GP is
fit only on evaluated feasible candidates, so it models accuracy where it matters; the
acquisition is expected improvement over the best feasible accuracy, times the predicted
probability of meeting every budget.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from scipy import linalg, stats


class ParameterEncoder:
    """Trial parameters -> a fixed-length vector (one-hot categorical, [0, 1] numeric)."""

    def __init__(self, distributions: Mapping[str, BaseDistribution]) -> None:
        self.distributions = dict(sorted(distributions.items()))
        self.width = sum(len(d.choices) if isinstance(d, CategoricalDistribution) else 1
                         for d in self.distributions.values())

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        parts: list[float] = []
        for name, dist in self.distributions.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                parts += [1.0 if value == choice else 0.0 for choice in dist.choices]
            elif isinstance(dist, (FloatDistribution, IntDistribution)):
                low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else \
                    (dist.low, dist.high)
                x = math.log(value) if dist.log else value
                parts.append((x - low) / (high - low) if high > low else 0.0)
            else:
                raise TypeError(f"{name}: unsupported distribution {dist!r}")
        return np.asarray(parts)


def proxy_matrix(rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Proxies of many candidates as columns standardised over these rows."""
    if not rows or not rows[0]:
        return np.zeros((len(rows), 0))
    names = sorted(rows[0])
    matrix = np.array([[row[name] for name in names] for row in rows], dtype=float)
    # proxies of a cell without an input-output path use huge sentinels: clip to the range
    low, high = np.percentile(matrix, [1, 99], axis=0)
    matrix = np.clip(matrix, low, high)
    std = matrix.std(axis=0)
    return (matrix - matrix.mean(axis=0)) / np.where(std > 0, std, 1.0)


def proxy_vote(matrix: np.ndarray) -> np.ndarray:
    """Zero-cost start-up score: the mean rank of every proxy (larger = better), as in the
    proxies' literature's vote; no accuracy is used to weigh them."""
    if matrix.shape[1] == 0:
        return np.zeros(len(matrix))
    return np.mean([stats.rankdata(column) for column in matrix.T], axis=0)


class AccuracyModel:
    """A small exact GP: squared-exponential kernel with one length scale for the parameter
    part and one for the proxy part, plus noise; hyperparameters by maximum marginal
    likelihood over a grid (few points, few hyperparameters: a grid is exact enough and
    costs milliseconds, where a per-feature optimiser cost a second per step)."""

    SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
    NOISES = (1e-3, 1e-2, 1e-1, 0.3)

    def __init__(self, parameter_width: int, refit_every: int = 8) -> None:
        self.parameter_width, self.refit_every = parameter_width, refit_every
        self._searched_at = 0
        self._x = np.zeros((0, 0))
        self._alpha = np.zeros(0)
        self._chol = np.zeros((0, 0))
        self._mean = self._std = 0.0
        self.hyper: tuple[float, float, float] = (1.0, 1.0, 1e-2)

    def _kernel(self, a: np.ndarray, b: np.ndarray, scale_p: float, scale_x: float) -> np.ndarray:
        w = self.parameter_width
        d_params = ((a[:, None, :w] - b[None, :, :w]) ** 2).sum(-1)
        d_proxies = ((a[:, None, w:] - b[None, :, w:]) ** 2).sum(-1)
        return np.exp(-d_params / (2 * scale_p ** 2) - d_proxies / (2 * scale_x ** 2))

    def fit(self, features: np.ndarray, accuracy: np.ndarray) -> None:
        self._mean, self._std = float(accuracy.mean()), float(accuracy.std() or 1.0)
        y = (accuracy - self._mean) / self._std
        n = len(y)
        search = n >= min(self._searched_at + self.refit_every, math.ceil(1.25 * self._searched_at))
        proxy_scales = self.SCALES if features.shape[1] > self.parameter_width else (1.0,)
        grid = [(p, x, noise) for p in self.SCALES for x in proxy_scales for noise in self.NOISES] \
            if search else [self.hyper]
        best: tuple[float, Any] = (-np.inf, None)
        kernels: dict[tuple[float, float], np.ndarray] = {}
        for scale_p, scale_x, noise in grid:
            if (scale_p, scale_x) not in kernels:
                kernels[(scale_p, scale_x)] = self._kernel(features, features, scale_p, scale_x)
            try:
                chol = linalg.cholesky(kernels[(scale_p, scale_x)] + noise * np.eye(n), lower=True)
            except linalg.LinAlgError:
                continue
            alpha = linalg.cho_solve((chol, True), y)
            evidence = -0.5 * y @ alpha - np.log(np.diag(chol)).sum()
            if evidence > best[0]:
                best = (evidence, (scale_p, scale_x, noise, chol, alpha))
        scale_p, scale_x, noise, self._chol, self._alpha = best[1]
        self.hyper = (scale_p, scale_x, noise)
        if search:
            self._searched_at = n
        self._x = features

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale_p, scale_x, _noise = self.hyper
        cross = self._kernel(features, self._x, scale_p, scale_x)
        mean = cross @ self._alpha
        v = linalg.solve_triangular(self._chol, cross.T, lower=True)
        var = np.maximum(1e-12, 1.0 - (v ** 2).sum(0))
        return mean * self._std + self._mean, np.sqrt(var) * self._std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    z = (mean - best) / std
    return (mean - best) * stats.norm.cdf(z) + std * stats.norm.pdf(z)
