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


def test_the_robust_first_ladder_compresses_the_least_harmed_unit_first(builder):
    from hwnas.search.sensitivity import robust_first_ladder
    from hwnas.sensitivity import SensitivityCell, UnitSensitivity

    ctx = builder.ctx
    cells = (SensitivityCell("stage3", PRECISION, "int8", 0.9999, 0.99, 1.0, 0.9, 0.0),
             SensitivityCell("stage1", PRECISION, "int8", 0.95, 0.8, 0.9, 0.8, 0.10),
             SensitivityCell("stage2", KEEP, "0.5", 0.999, 0.99, 1.0, 0.9, 0.0),
             SensitivityCell("stage2", KEEP, "0.75", 0.9999, 0.999, 1.0, 0.9, 0.0),  # off grid
             SensitivityCell("head", PRECISION, "int8", error="refused"),
             SensitivityCell("stage2", PRECISION, "int8", 0.99, 0.95, 0.99, 0.88, 0.02))
    table = UnitSensitivity("k", "w", 0.9, 128, "cpu", cells)
    ladder = robust_first_ladder(ctx.space, ctx.shape, table)
    whole = {k: (1.0 if k.startswith("keep_") else "fp32") for k in ladder[0]
             if k.startswith(("keep_", "precision_"))}
    changed = [sorted(k for k in rung if rung[k] != before.get(k, rung[k]))
               for before, rung in zip([whole] + ladder[:-1], ladder)]
    # one change a rung, least harm first (drop 0, cosine 0.9999 before 0.999); the failed
    # variant and a keep ratio off the width grid (0.25, 0.5, 1.0) left out
    assert changed == [["precision_stage3"], ["keep_stage2"], ["precision_stage2"],
                       ["precision_stage1"]]
    assert ladder[1]["keep_stage2"] == 0.5 and ladder[-1]["precision_stage1"] == "int8"
    assert ladder[-1]["precision_head"] == "fp32" and ladder[-1]["keep_stage1"] == 1.0


def test_a_search_ordered_by_sensitivity_proposes_the_most_robust_change_first(tmp_path):
    from hwnas.run import outcomes
    from hwnas.search import run_search

    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE).replace(
        "budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}", "budgets: {model_size_mb: 1.0}")
        .replace("max_steps: 60", "max_steps: 5")  # the proposal is the point, not the tune
        + "search:\n  n_trials: 1\n  sampler: engine\n  engine_order: sensitivity\n"
          "  sensitivity: {keep_ratios: [0.5], samples: 64}\n")
    device.write_text(FAST_DEVICE)
    lines = []
    outcome = run_search(space, device, tmp_path / "run", progress=False, log=lines.append)
    (found,) = kept(outcome.study.user_attrs)
    (trial,) = outcomes(outcome.study)
    assert outcome.study.trials[0].user_attrs["proposed_by"] == "ladder_start"
    # the base model with only the least harmed change of the table applied
    best = min((c for c in found.cells if c.error is None),
               key=lambda c: (c.accuracy_drop, 1.0 - c.cosine_mean))
    keep, plan = dict(trial.candidate.keep_ratios), dict(trial.candidate.precision_plan)
    changed = [u for u, k in keep.items() if k != 1.0] + [u for u, p in plan.items() if p != "fp32"]
    assert changed == [best.unit]
    assert (plan[best.unit] == best.value) if best.kind == PRECISION else \
        (keep[best.unit] == float(best.value))
    assert any(line.startswith("engine order: ") for line in lines)


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
