"""The engine's claim on a proposal (hwnas/search/proposer.py ``_claim``), on a real SQLite
study: a controller whose books have not yet read a trial that another worker just finished
with the same candidate steps aside instead of running it again as a copy (CI, 2026-12-07:
two PostgreSQL workers under load, trial 8 a copy of trial 7)."""

from __future__ import annotations

import optuna

from hwnas.bench.nb201 import OPERATIONS
from hwnas.search.policy import COMPRESSION
from hwnas.search.proposer import CLAIM, EngineSampler, claim_key
from tests.search.test_engine import evaluator, space, table  # noqa: F401


def test_a_candidate_another_worker_finished_meanwhile_is_not_claimed(tmp_path, space, table):  # noqa: F811
    replay = evaluator(space, table)
    sampler = EngineSampler(replay, COMPRESSION, seed=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'claims.db'}", sampler=sampler,
                                directions=["maximize", "minimize"])
    def cell(op: str):  # every edge the same operation
        return replay.suggest(optuna.trial.FixedTrial(
            {space.parameter(tuple(edge)): op for edge in space.edges}))

    candidate = cell(OPERATIONS[1])
    key = claim_key(replay.describe(candidate))

    finished = study.ask()  # another worker's trial of the same candidate, finished
    study._storage.set_trial_system_attr(finished._trial_id, CLAIM, key)
    study.tell(finished, [0.5, 1.0])
    mine = study.ask()
    frozen = study._storage.get_trial(mine._trial_id)
    sampler._held[frozen.number] = (None, candidate)
    assert not sampler._claim(study, frozen, {})
    assert candidate in sampler.books.of(None).claimed  # not proposed again

    other = cell(OPERATIONS[2])
    sampler._held[frozen.number] = (None, other)
    assert sampler._claim(study, frozen, {})  # a candidate nobody holds is claimed
