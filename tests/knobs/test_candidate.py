"""The Candidate as the knobs write it: JSON stored by earlier hwnas reads back the same, the
fine-tuning seed drawn from it is unchanged, and the engine's uniform ladders are each knob's
idea of "cheaper"."""

from __future__ import annotations

import textwrap

import pytest

from hwnas.config import load_search_space
from hwnas.config.models import DeviceProfile
from hwnas.knobs import Candidate, knob
from hwnas.records import TrialOutcome
from hwnas.space import distributions, space_shape, uniform_ladders
from tests.conftest import DIGITS_SPACE

# as studies hold them today (hwnas before knobs were plug-ins), and before the calibration
# and transformer knobs existed
STORED = [
    {"keep_ratios": {"stage1": 0.5, "stage2": 1.0}, "pruning_criterion": "saliency",
     "global_pruning_ratio": 0.1, "precision_plan": {"stage1": "int8", "head": "fp32"},
     "calibration_method": "entropy"},
    {"keep_ratios": {"s": 1.0}, "pruning_criterion": "l1", "global_pruning_ratio": 0.0,
     "precision_plan": {}, "calibration_method": "minmax", "head_keep_ratios": {"a": 0.5}},
    {"keep_ratios": {"stage1": 0.25}, "pruning_criterion": "l1", "global_pruning_ratio": 0.2,
     "precision_plan": {"stage1": "fp16"}},
]
# Candidate.finetune_seed(0) of each, as the hwnas before plug-ins computed it: the same
# compression is fine-tuned the same way by a study resumed across the change
SEEDS = [3620769913, 382241896, None]


@pytest.mark.parametrize("index", range(len(STORED)))
def test_stored_candidates_read_back_as_they_were(index):
    data = STORED[index]
    candidate = Candidate.from_dict(data)
    written = candidate.to_dict()
    assert written == {"calibration_method": "minmax", **data}  # the oldest lack the method
    assert Candidate.from_dict(written) == candidate and hash(Candidate.from_dict(written)) == \
        hash(candidate)
    assert dict(candidate.keep_ratios) == data["keep_ratios"]
    assert candidate.pruning_criterion == data["pruning_criterion"]
    assert candidate.global_pruning_ratio == data["global_pruning_ratio"]
    assert dict(candidate.precision_plan) == data["precision_plan"]
    assert dict(candidate.head_keep_ratios) == data.get("head_keep_ratios", {})
    if SEEDS[index] is not None:
        assert candidate.finetune_seed(0) == SEEDS[index]
    outcome = TrialOutcome.from_attributes({"stage": "evaluated", "candidate": data})
    assert outcome.candidate == candidate


def test_the_built_in_constructor_and_the_record_agree():
    built = Candidate.build({"stage1": 0.5, "stage2": 1.0}, "saliency", 0.1,
                            {"stage1": "int8", "head": "fp32"}, "entropy")
    assert built == Candidate.from_dict(STORED[0])
    summary = built.summary()
    assert "keep[stage1=0.5 stage2=1]" in summary and "saliency global=0.1" in summary
    assert "prec[head:fp32 stage1:int8]" in summary and "cal=entropy" in summary
    # the calibration method says nothing where nothing is quantized
    assert "cal=" not in Candidate.build({"s": 1.0}, "l1", 0.0, {"s": "fp16"}).summary()
    # nothing pruned (the width knob off, no global ratio): no keep ratios, no criterion
    assert Candidate.build({"s": 1.0}, "saliency", 0.0, {"s": "fp16"}).summary() == "prec[s:fp16]"
    assert Candidate.build({"s": 0.5}, "saliency", 0.0, {}).summary() == "keep[s=0.5] saliency"
    assert Candidate.build({"s": 1.0}, "l1", 0.0, {}).summary() == "base model (unchanged)"
    assert built.replace(pruning=("l1", 0.0)).global_pruning_ratio == 0.0


def test_a_knob_name_is_registered_once():
    from hwnas.knobs.width import Width

    with pytest.raises(ValueError, match=r"knob 'width' is already registered by "
                                         r"hwnas.knobs.width.Width"):
        class Impostor(Width):  # subclassing with a name registers it
            name = "width"

    assert type(knob("width")) is Width


def shape_of(space, **units):
    device = DeviceProfile(name="d", connection={"kind": "local"}, precisions=["fp32", "int8"])
    return space_shape(space, device, units)


def test_uniform_ladders_walk_each_knobs_idea_of_cheaper(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(DIGITS_SPACE))
    space = load_search_space(path)
    stages = ["stage1", "stage2", "stage3"]
    shape = shape_of(space, width=stages, precision=stages + ["head"])
    assert set(distributions(space, shape)) == {
        "keep_stage1", "keep_stage2", "keep_stage3", "pruning_criterion", "global_pruning_ratio",
        "precision_stage1", "precision_stage2", "precision_stage3", "precision_head"}
    ladders = uniform_ladders(space, shape)
    # one ladder per precision of the device, rungs from the widest uniform keep down, the
    # other knobs at their least destructive choice
    assert ladders == [[{"pruning_criterion": "l1", "global_pruning_ratio": 0.0,
                         **{f"precision_{u}": precision for u in stages + ["head"]},
                         **{f"keep_{s}": keep for s in stages}}
                        for keep in (1.0, 0.5, 0.25)] for precision in ("fp32", "int8")]

    # transformers: every head and MLP unit kept; no precision knob: one ladder
    path.write_text(textwrap.dedent(DIGITS_SPACE).replace(
        "  precision: {granularity: stage}\n",
        "  precision: null\n  heads: {keep_ratios: [0.5, 1.0]}\n  mlp: {keep_ratios: [0.25, 0.75]}\n"))
    space = load_search_space(path)
    (ladder,) = uniform_ladders(space, shape_of(space, width=stages, precision=["head"],
                                                heads=["block0"], mlp=["block0"]))
    assert [rung["keep_stage1"] for rung in ladder] == [1.0, 0.5, 0.25]
    assert all(rung["heads_block0"] == 1.0 and rung["mlp_block0"] == 0.75 for rung in ladder)
    assert not any(name.startswith("precision_") for name in ladder[0])
