"""The pre-flight line on the budgets, printed before any fine-tune: they do not bind (the
unpruned base already meets them at a precision the space allows), they bind, or they cannot
be met (even the smallest candidate breaks one). Real digits searches of one trial, measured
by the real local agent."""

import re

import pytest

from hwnas.cli import main
from hwnas.run import RunFolder
from hwnas.search.budget_reach import ATTRIBUTE, smallest_precision
from tests.conftest import DIGITS_SPACE, FAST_DEVICE

ONE_TRIAL = "search: {n_trials: 1, seed: 3}\n"


def search(tmp_path, capsys, budgets: str, *more: str) -> tuple[str, str]:
    space, device = tmp_path / "digits.yaml", tmp_path / "device.yaml"
    space.write_text(DIGITS_SPACE.replace("max_steps: 60", "max_steps: 5")
                     .replace("budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}", budgets)
                     + ONE_TRIAL)
    device.write_text(FAST_DEVICE)
    assert main(["search", str(space), "--device", str(device), "--run-dir",
                 str(tmp_path / "run"), "--no-progress", *more]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("pre-flight: the budgets")]
    assert len(lines) == 1, printed
    # before any fine-tune: before the trials' table
    assert printed.index(lines[0]) < printed.index("Pareto front") if "Pareto front" in printed \
        else printed.index(lines[0]) < printed.index("No trial meets")
    return lines[0], printed


def test_budgets_the_base_model_meets_at_fp32_do_not_bind(tmp_path, capsys):
    line, _ = search(tmp_path, capsys, "budgets: {latency_p90_ms: 50.0, model_size_mb: 5.0}")
    assert line.startswith("pre-flight: the budgets do not bind: the base model, unpruned at "
                           "fp32, already meets every budget ("), line
    assert re.search(r"latency_p90_ms [\d.e-]+ \(budget 50\), model_size_mb 0\.5\d* \(budget 5\)",
                     line), line
    assert "give up accuracy for margin" in line
    # the base model's own measurement answered: nothing else was measured
    assert ATTRIBUTE not in RunFolder.load(tmp_path / "run").open_study().user_attrs


def test_budgets_met_only_at_int8_do_not_bind_and_a_resumed_search_measures_nothing_again(
        tmp_path, capsys):
    budgets = "budgets: {latency_p90_ms: 50.0, model_size_mb: 0.3}"  # base: 0.56 MB fp32
    line, _ = search(tmp_path, capsys, budgets)
    assert "do not bind: the base model, unpruned at int8, already meets" in line, line
    study = RunFolder.load(tmp_path / "run").open_study()
    kept = study.user_attrs[ATTRIBUTE]
    assert [(r["label"], r["precision"]) for r in kept["references"]] == [("base", "int8")]
    again, _ = search(tmp_path, capsys, budgets, "--trials", "2")
    assert again == line
    assert RunFolder.load(tmp_path / "run").open_study().user_attrs[ATTRIBUTE] == kept


def test_budgets_the_smallest_candidate_breaks_cannot_be_met_and_the_search_goes_on(
        tmp_path, capsys):
    line, printed = search(tmp_path, capsys,
                           "budgets: {latency_p90_ms: 50.0, model_size_mb: 0.005}")
    assert line.startswith("pre-flight: the budgets cannot be met: even the smallest candidate "
                           "(every knob at its most aggressive, int8 throughout) breaks them: "
                           "model_size_mb 0.0"), line
    assert re.search(r"\(budget 0\.005\), model_size_mb over budget by \d+%", line), line
    assert "latency_p90_ms" not in line  # only the budget it breaks is named
    assert "relax budgets.model_size_mb" in line and "The search goes on" in line
    assert "No trial meets every budget" in printed  # and it did go on: a trial ran
    kept = RunFolder.load(tmp_path / "run").open_study().user_attrs[ATTRIBUTE]
    assert [(r["label"], r["precision"]) for r in kept["references"]] == \
        [("base", "int8"), ("smallest", "int8")]


def test_budgets_the_base_breaks_and_the_smallest_meets_bind(tmp_path, capsys):
    line, _ = search(tmp_path, capsys, "budgets: {latency_p90_ms: 50.0, model_size_mb: 0.1}")
    assert line.startswith("pre-flight: the budgets bind: the base model breaks them (at fp32: "
                           "model_size_mb over budget by "), line
    assert "; at int8: model_size_mb over budget by" in line
    assert "the smallest candidate (int8 throughout) meets them" in line


@pytest.mark.parametrize("choices, smallest", [(("fp32", "int8"), "int8"),
                                               (("fp16", "fp32"), "fp16"),
                                               (("fp32",), "fp32"),
                                               (("a16w8", "fp16", "int8_weight_only"), "a16w8")])
def test_the_smallest_precision_is_the_one_that_stores_and_computes_least(choices, smallest):
    assert smallest_precision(choices) == smallest
