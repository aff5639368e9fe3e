"""Feasibility and the Pareto front of a study, decided once, from TrialOutcome records.

A trial is feasible when it was evaluated and every constraint is <= 0 (hwnas/metrics.py:
a ceiling's excess or a floor's shortfall). The front's directions are the study's own, which
the metric registry gave it when it was created (hwnas.metrics.directions): a report on a
study whose plug-in metric is not installed here still reads its front right.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import optuna

from hwnas.records import TrialOutcome


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[int]) -> bool:
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x > s * y for x, y, s in zip(a, b, signs))


def pareto_front(found: Iterable[TrialOutcome], directions: Sequence[str]) -> list[TrialOutcome]:
    """Feasible trials no other feasible trial dominates (accuracy first, maximised), one per
    model (deployed bytes): the first trial that has them."""
    signs = [1 if d in ("maximize", "MAXIMIZE") else -1 for d in directions]
    feasible = [o for o in found if o.feasible]
    front = [o for o in feasible
             if not any(_dominates(other.values, o.values, signs) for other in feasible  # type: ignore[arg-type]
                        if other is not o)]
    # one row per model: a trial that re-proposed a measured candidate is a copy of its bytes
    seen: set[str] = set()
    unique = []
    for outcome in front:
        key = outcome.artifact.sha256 if outcome.artifact is not None else f"#{outcome.number}"
        if key not in seen:
            seen.add(key)
            unique.append(outcome)
    return unique


def study_directions(study: optuna.Study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def best_feasible(found: Iterable[TrialOutcome], directions: Sequence[str] | None = None
                  ) -> TrialOutcome | None:
    """The most accurate trial meeting every budget (accuracy is the first objective). With
    the study's ``directions``, of equally accurate trials the one on the Pareto front (a tie
    is broken by the other objectives, so the best is always a front model); without them,
    the first."""
    candidates = pareto_front(found, directions) if directions is not None else \
        [o for o in found if o.feasible]
    return max(candidates, key=lambda o: o.values[0],  # type: ignore[index]
               default=None)
