"""The search engine's policy, as settings, and the records its books keep.

A trial ends in one of the stages of `hwnas.records.TrialStage` (one vocabulary for every
sampler, every report and every benchmark): the constants here are those stages' values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Literal

from hwnas.records import TrialStage

STAGE_EVALUATED = TrialStage.EVALUATED.value
STAGE_REJECTED = TrialStage.REJECTED.value
STAGE_SKIPPED = TrialStage.SKIPPED.value
STAGE_STOPPED = TrialStage.STOPPED.value
STAGE_DUPLICATE = "duplicate"  # a trial of a candidate already paid for: its record is a copy
# a rejected candidate was never evaluated: this stands in for its accuracy so that a
# sampler sees it as bad; reports show it as "not evaluated" (the same as budgets.py's)
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


#: what an Optuna sampler (tpe, nsga2, random) runs with through the one pipeline: measured
#: once before fine-tuning (rejected if it breaks a budget) and once after, as deployed
PLAIN = Policy(acquisition="sampler", use_proxies=False, max_rounds=1, between_prior=None,
               predictor=False, max_evaluations=10 ** 9)

#: the engine's policy for compression: along the budgets' frontier (the uniform ladders,
#: then budget moved between stages and precisions); few trials: the predictor starts early
COMPRESSION = Policy(acquisition="frontier", use_proxies=True, startup_evaluations=3,
                     predictor_min_measurements=6, pool_size=500, max_evaluations=10 ** 9)


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
