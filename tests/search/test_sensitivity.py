"""Per-unit sensitivity of the exported bytes (hwnas/search/sensitivity.py) on the digits CNN:
a unit at int8 reads differently from the base (fp32 itself reads as identical), only the named
unit changes in the exported graph, the study's copy is reused, and the report shows it."""

import textwrap

import onnx
import optuna
import pytest

from hwnas.config.search import SensitivitySettings
from hwnas.export.precision import realised_precisions
from hwnas.search.candidates import CandidateBuilder
from hwnas.search.optimize import trial_context
from hwnas.search.sensitivity import Change, changes, ensure, export_variant
from hwnas.search.study import prepare
from hwnas.sensitivity import ATTR, KEEP, PRECISION, kept, sensitivity_table
from tests.conftest import DIGITS_SPACE, FAST_DEVICE

SETTINGS = SensitivitySettings(keep_ratios=[0.25], samples=128)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensitivity")
    space, device = folder / "space.yaml", folder / "device.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE))
    device.write_text(FAST_DEVICE)
    prepared = prepare(space, device, log=lambda _: None)
    return CandidateBuilder(trial_context(prepared, None, None))


def test_changes_cover_each_unit_at_each_device_precision_and_keep_ratio(builder):
    found = changes(builder, SETTINGS)
    units = builder.ctx.shape.precision_units
    assert {(c.unit, c.value) for c in found if c.kind == PRECISION} == {(u, "int8") for u in units}
    assert {(c.unit, c.value) for c in found if c.kind == KEEP} == \
        {(s, "0.25") for s in builder.ctx.shape.stages}


def test_int8_reads_apart_from_fp32_which_reads_as_the_base(builder):
    study = optuna.create_study()
    wanted = [Change("stage2", PRECISION, "fp32"), Change("stage2", PRECISION, "int8"),
              Change("stage2", KEEP, "0.25")]
    found, measured = ensure(study, builder, SETTINGS, log=lambda _: None, wanted=wanted)
    assert measured and found.samples == 128 and 0.5 < found.base_accuracy <= 1.0
    same = found.cell("stage2", "fp32")
    assert same.cosine_mean == pytest.approx(1.0, abs=1e-6) and same.accuracy_drop == 0.0
    assert same.top1_agreement == 1.0
    int8 = found.cell("stage2", "int8")
    assert int8.error is None and int8.cosine_mean < 1.0 - 1e-7 and int8.cosine_min <= int8.cosine_mean
    assert int8.size_bytes < same.size_bytes  # int8 weights: the bytes changed
    narrow = found.cell("stage2", "keep 0.25")
    assert narrow.cosine_mean < int8.cosine_mean  # a quarter of the channels, no fine-tune
    assert narrow.accuracy_drop == pytest.approx(found.base_accuracy - narrow.accuracy)
    assert "stage2" in sensitivity_table(found) and "keep 0.25" in sensitivity_table(found)

    # cached in the study: a second call measures nothing and returns the same table
    again, measured = ensure(study, builder, SETTINGS, log=lambda _: None, wanted=wanted)
    assert not measured and again == found
    assert kept(study.user_attrs) == [found] and list(study.user_attrs[ATTR]) == [found.key]
    # other settings are another entry, not a stale hit
    other = SensitivitySettings(keep_ratios=[0.25], samples=64)
    third, measured = ensure(study, builder, other, log=lambda _: None, wanted=wanted[:1])
    assert measured and third.key != found.key and len(kept(study.user_attrs)) == 2


def test_only_the_named_unit_changes_in_the_exported_graph(builder, tmp_path):
    base, _ = export_variant(builder, None, tmp_path / "base.onnx")
    int8, _ = export_variant(builder, Change("stage2", PRECISION, "int8"), tmp_path / "int8.onnx")
    units = dict(int8.node_units)
    realised = realised_precisions(onnx.load(int8.path))
    assert {p for n, p in realised.items() if units[n] == "stage2"} == {"int8"}
    assert {p for n, p in realised.items() if units[n] != "stage2"} == {"fp32"}
    assert set(realised_precisions(onnx.load(base.path)).values()) == {"fp32"}

    _, base_art = export_variant(builder, None, tmp_path / "b.onnx")
    _, narrow = export_variant(builder, Change("stage2", KEEP, "0.25"), tmp_path / "k.onnx")
    stage2 = set(builder.ctx.space.base_model.stages["stage2"])
    before, after = dict(base_art.channels), dict(narrow.channels)
    in_stage2 = {n for n in before if any(n == p or n.startswith(p + ".") for p in stage2)}
    assert in_stage2 and all(after[n] < before[n] for n in in_stage2)
    assert all(after[n] == before[n] for n in before if n not in in_stage2)


def test_a_flag_replaces_its_own_setting_only_and_a_wrong_one_names_itself():
    """`hwnas sensitivity --samples N` keeps the space's keep ratios (and the other way round)."""
    from hwnas.errors import ConfigError
    from hwnas.search.sensitivity_run import with_overrides

    space = SensitivitySettings(keep_ratios=[0.25], samples=128)
    assert with_overrides(space, {"samples": 64}) == SensitivitySettings(keep_ratios=[0.25], samples=64)
    assert with_overrides(space, {"keep_ratios": [0.5]}) == \
        SensitivitySettings(keep_ratios=[0.5], samples=128)
    assert with_overrides(space, {}) == space
    with pytest.raises(ConfigError, match="--samples"):
        with_overrides(space, {"samples": 2})
    with pytest.raises(ConfigError, match="--keep-ratios"):
        with_overrides(space, {"keep_ratios": [1.0]})
