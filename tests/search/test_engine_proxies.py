"""The engine's proxy of a pool candidate (multiply-accumulates of the pruned network) is read
from the pruned structure alone: candidates that differ only in precision or calibration are
pruned once, and none is exported or quantized for it (the model pool ranks hundreds; on the
QNN HTP test search that export took 52 of its 72 s)."""

import pytest

from hwnas.knobs import Candidate
from hwnas.search.candidates import CandidateBuilder
from hwnas.search.compression import CompressionEvaluator
from tests.search.test_sensitivity import builder  # noqa: F401 - the prepared digits search


@pytest.fixture(scope="module")
def evaluator(builder):  # noqa: F811
    return CompressionEvaluator(builder.ctx, builder)


def candidate(keep: float, precision: str, calibration: str = "minmax") -> Candidate:
    return Candidate.build({"stage1": keep, "stage2": keep, "stage3": 1.0}, "l1", 0.0,
                           {u: precision for u in ("stage1", "stage2", "stage3", "head")},
                           calibration)


def test_structure_holds_the_pruning_knobs_only():
    a, b = candidate(0.5, "int8"), candidate(0.5, "fp32", "percentile")
    assert a != b and a.structure() == b.structure()
    assert {name for name, _ in a.structure()} >= {"width", "pruning"}
    assert not {"precision", "calibration"} & {name for name, _ in a.structure()}
    assert candidate(0.25, "int8").structure() != a.structure()


def test_proxies_prune_each_structure_once_and_export_nothing(evaluator, monkeypatch):
    builder: CandidateBuilder = evaluator.builder
    pruned, built = [], []
    prune, build = builder.prune_with_plan, builder.build
    monkeypatch.setattr(builder, "prune_with_plan", lambda c: pruned.append(c) or prune(c))
    monkeypatch.setattr(builder, "build", lambda *a, **k: built.append(a) or build(*a, **k))
    pool = [candidate(keep, precision, calibration) for keep in (0.25, 0.5)
            for precision in ("fp32", "int8") for calibration in ("minmax", "percentile")]
    figures = [evaluator.proxies(c)["log_macs"] for c in pool]
    assert len(pruned) == 2 and built == []
    assert len(set(figures[:4])) == 1 and len(set(figures[4:])) == 1
    assert figures[0] < figures[4]  # a quarter of the channels computes less than half
    # the exported size is still the candidate's own, and its proxy the same as before
    assert evaluator.static_figures(pool[2])["model_size_mb"] < \
        evaluator.static_figures(pool[0])["model_size_mb"]
    assert len(built) == 2 and evaluator.proxies(pool[2])["log_macs"] == figures[2]
