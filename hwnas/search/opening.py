"""Opening a run's study: its sampler (seeded per resumption and per worker), abandoned
trials failed so they are retried first, and what to say when the run folder is busy.
Shared by image and language-model searches (hwnas/search/study.py, hwnas/llm/search.py)."""

from __future__ import annotations

import os
from typing import Callable

import optuna

from hwnas import metrics
from hwnas.config.models import SearchSpace
from hwnas.errors import ConfigError
from hwnas.run import RunFolder
from hwnas.search.controllers import fail_abandoned_trials
from hwnas.storage import make_storage


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``search.sampler`` (the engine's is made with its evaluator:
    optimize.py; this one is its base sampler then)."""
    if space.search.sampler in ("random", "engine"):
        return optuna.samplers.RandomSampler(seed=seed)
    if space.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    startup = min(10, max(3, space.search.n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def resumption_seed(seed: int, trials: int, worker: bool) -> int:
    """The sampler's seed for this controller: a fresh seed per resumption, and per worker (the
    same seed would replay the same random start-up trials, and several workers would propose
    the same candidates); within what the samplers accept (< 2**32)."""
    return (seed + trials + (os.getpid() if worker else 0)) % 2**32


SEARCH_ADVICE = ("use another --run-dir (more machines join one search as `hwnas worker`s on a "
                 "shared --storage)")
WORKER_ADVICE = "give each worker its own --run-dir"


def open_study(run: RunFolder, space: SearchSpace, log: Callable[[str], None],
               worker: bool) -> optuna.Study:
    """The run's study (created with the objectives' directions), its abandoned trials failed
    (retried first), with the space's sampler; a new one gets the space's enqueued trials."""
    storage = make_storage(run.storage_url)
    directions = metrics.directions(space.objectives)
    probe = optuna.create_study(storage=storage, study_name=run.study_name,
                                directions=directions, load_if_exists=True)
    abandoned = fail_abandoned_trials(probe)
    if abandoned:
        log(f"trials {abandoned} were left running by a controller that stopped: their "
            f"candidates are retried first, reusing what was already measured")
    trials = probe.get_trials(deepcopy=False)
    study = optuna.load_study(study_name=run.study_name, storage=storage, sampler=make_sampler(
        space, resumption_seed(space.search.seed, len(trials), worker)))
    if not trials:
        for params in space.search.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def with_trials(space: SearchSpace, n_trials: int | None) -> SearchSpace:
    """The space with ``--trials`` in place of ``search.n_trials`` (None: its own)."""
    if n_trials is None:
        return space
    if n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: give the total number of trials wanted (>= 1)")
    return space.model_copy(update={"search": space.search.model_copy(
        update={"n_trials": n_trials})})
