"""The search: study wiring (study.py), one trial (objective.py), progress (progress.py)."""

from hwnas.search.study import (
    AllTrialsFailed,
    Prepared,
    SearchOutcome,
    make_sampler,
    open_pool,
    prepare,
    run_search,
    run_worker,
    trial_context,
)

__all__ = ["AllTrialsFailed", "Prepared", "SearchOutcome", "make_sampler", "open_pool", "prepare",
           "run_search", "run_worker", "trial_context"]
