"""The search: study wiring (study.py), running the trials (optimize.py) through the one trial
pipeline (pipeline.py), progress (progress.py)."""

from hwnas.search.optimize import AllTrialsFailed, open_pool, trial_context
from hwnas.search.prepared import Prepared, SearchOutcome
from hwnas.search.opening import make_sampler
from hwnas.search.study import prepare, run_search, run_worker

__all__ = ["AllTrialsFailed", "Prepared", "SearchOutcome", "make_sampler", "open_pool", "prepare",
           "run_search", "run_worker", "trial_context"]
