"""`hwnas search` of a language model, end to end on a tiny Llama: the engine proposes LLM
knobs, each candidate is sliced, exported to an onnxruntime-genai folder, measured generating
by the real agent's genai runtime, evaluated as exported bytes, and recorded; the report and
the kept folders are what a user deploys."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hwnas.errors import ConfigError
from hwnas.records import TrialStage
from hwnas.run import RunFolder, outcomes
from tests.conftest import GENAI_DEVICE

pytest.importorskip("onnxruntime_genai")


SPACE = """\
name: tiny-llm
base_model: {causal_lm: hf}
dataset:
  text: {builtin: pydoc}
  tokens: {calibration: 0, saliency: 512, healing: 512, selection: 512, evaluation: 512}
  sequence_length: 64
knobs:
  llm_mlp: {keep_ratios: [0.5, 0.75, 1.0], groups: 2, multiple: 16}
  llm_layers: {drop: [0, 1]}
  llm_bits: {precisions: [fp32, int8/32, int4/32], groups: 2, embedding: [fp32, int4/32],
             lm_head: [fp32, int4/32]}
budgets: {model_size_mb: 0.4}
"""


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hwnas.testing.llm import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("llm") / "hf", "llama")


def _write(folder: Path, hf: Path, extra: str, space: str = SPACE) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space.replace("causal_lm: hf", f"causal_lm: {hf}")
                                       + extra)
    (folder / "device.yaml").write_text(GENAI_DEVICE)
    return folder / "space.yaml", folder / "device.yaml"


def _search(space: Path, device: Path, run_dir: Path, **kwargs):  # type: ignore[no-untyped-def]
    from hwnas.search import run_search

    return run_search(space, device, run_dir, progress=False, log=lambda _: None, **kwargs)


def test_the_engine_searches_a_language_model_on_its_exported_bytes(tiny_hf, tmp_path):
    import onnxruntime_genai as og
    from hwnas_agent.manifest import from_folder

    from hwnas.llm.evaluate import evaluate_folder
    from hwnas.llm.quantize import applied_precisions
    from hwnas.report import write_report
    from hwnas.report.card import export_trial
    from hwnas.search.finalize import finalize_run

    space, device = _write(tmp_path, tiny_hf, "search: {n_trials: 5, sampler: engine, seed: 0}\n")
    outcome = _search(space, device, tmp_path / "run")
    study = outcome.study
    found = outcomes(study)
    assert len(found) == 5 and outcome.trials_run == 5
    assert study.directions[1] == optuna.study.StudyDirection.MAXIMIZE  # decode tokens/s
    assert all(t.user_attrs.get("proposed_by") for t in study.trials)  # the engine's policy
    rejected = [o for o in found if o.stage == TrialStage.REJECTED]
    evaluated = [o for o in found if o.stage == TrialStage.EVALUATED]
    assert evaluated
    for o in rejected:
        assert "model_size_mb over budget" in o.rejection and o.artifact.size_mb > 0.4
        assert o.accuracy_val is None
    # the size the engine rules candidates out with is a lower bound of every folder's bytes;
    # the fp32 rungs (0.74-0.94 MB) are ruled out without being exported or measured
    from hwnas.knobs import Candidate
    from hwnas.knobs.llm import draft_of
    from hwnas.config import load_search_space
    from hwnas.llm.source import load_causal_lm

    knobs, config = load_search_space(space).knobs, load_causal_lm(tiny_hf).config
    for o in found:
        dropped = study.trials[o.number].user_attrs["llm"]["slice_plan"]["drop_layers"]
        bound = draft_of(dict(o.candidate.values), knobs, config, dropped).weight_bytes()
        assert 0 < bound / 1e6 <= o.artifact.size_mb
    fp32 = Candidate.of({"llm_mlp": {"layers_0_1": 1.0, "layers_2_3": 1.0}, "llm_layers": 0,
                         "llm_bits": {"layers_0_1": "fp32", "layers_2_3": "fp32",
                                      "embedding": "fp32", "lm_head": "fp32"}})
    assert draft_of(dict(fp32.values), knobs, config, ()).weight_bytes() / 1e6 > 0.4
    assert fp32 not in [o.candidate for o in found]
    data = RunFolder.load(tmp_path / "run").open_study()
    assert data.user_attrs["model_family"] == "causal_lm"
    for o in evaluated:
        trial = study.trials[o.number]
        llm = trial.user_attrs["llm"]
        folder = tmp_path / "run" / llm["folder"]
        # the bytes the agent measured and the search evaluated are the kept folder's
        manifest = from_folder(str(folder), "model.onnx")
        assert manifest.sha256 == o.artifact.sha256 == o.measurement.model_sha256
        assert o.artifact.size_mb <= 0.4 and o.measurement.decode_tokens_per_s > 0
        assert trial.values[1] == pytest.approx(o.measurement.decode_tokens_per_s)
        again = evaluate_folder(folder, _selection(tiny_hf, space)).perplexity
        assert o.accuracy_val == pytest.approx(again.top1_accuracy)
        assert llm["perplexity_val"] == pytest.approx(again.perplexity)
        # what the candidate asked is what the graph holds
        bits = dict(o.candidate.value("llm_bits"))
        import onnx

        held = set(applied_precisions(onnx.load(str(folder / "model.onnx"),
                                                load_external_data=False)).values())
        assert {bits["layers_0_1"], bits["layers_2_3"]} <= held | {"fp32"}
        drop = o.candidate.value("llm_layers")
        assert len(llm["slice_plan"]["drop_layers"]) == drop
        config = json.loads((folder / "genai_config.json").read_text())
        assert config["model"]["decoder"]["num_hidden_layers"] == 4 - drop
        og.Model(str(folder))  # onnxruntime-genai loads the folder as it is
    tested = study.user_attrs["llm_test"]
    assert tested and all(v["perplexity"] > 1 for v in tested.values())
    # the report's fixed prompt, continued greedily by each front folder
    assert all(v["generation"].startswith("The for statement") for v in tested.values())
    paths = write_report(study, tmp_path / "report")
    table = paths["markdown"].read_text()
    assert "decode tok/s" in table and paths["json"].is_file() and paths["plot"].is_file()
    assert paths["layers"].is_file() and "layer by layer" in table
    # `hwnas export`: the folder as the search measured it, and its card
    best = max(evaluated, key=lambda o: (o.accuracy_val, o.number))
    exported = export_trial(RunFolder.load(tmp_path / "run"), best.number, tmp_path / "out")
    assert from_folder(str(exported["model"]), "model.onnx").sha256 == best.artifact.sha256
    card = json.loads(exported["card"].read_text())
    assert card["quality"]["next_token_accuracy_val"] == best.accuracy_val
    assert card["measurement"]["model_sha256"] == best.artifact.sha256
    assert card["slice_plan"]["drop_layers"] == study.trials[best.number].user_attrs[
        "llm"]["slice_plan"]["drop_layers"]
    og.Model(str(exported["model"]))
    with pytest.raises(ConfigError, match="not finalized yet"):
        finalize_run(tmp_path / "run", top=1)


def _selection(hf: Path, space: Path):  # type: ignore[no-untyped-def]
    from hwnas.config import load_search_space
    from hwnas.llm.source import load_causal_lm
    from hwnas.llm.text import language_data

    spec = load_search_space(space).dataset.language()
    return language_data(spec, load_causal_lm(hf).tokenizer).selection


def test_healing_makes_new_bytes_that_are_measured_again(tiny_hf, tmp_path):
    """With ``finetune`` written, the sliced model is distilled from its parent, exported
    again, and the healed folder is what is evaluated and measured (it decides)."""
    space, device = _write(tmp_path, tiny_hf, (
        "finetune: {max_steps: 3, max_seconds: 60, batch_size: 2, learning_rate: 0.001}\n"
        "search: {n_trials: 1, sampler: random, seed: 1,\n"
        "         enqueue: [{llm_mlp_layers_0_1: 0.5, llm_mlp_layers_2_3: 0.5,\n"
        "                    llm_drop_layers: 0, llm_bits_layers_0_1: int8/32,\n"
        "                    llm_bits_layers_2_3: int8/32, llm_bits_embedding: int4/32,\n"
        "                    llm_bits_lm_head: int4/32}]}\n"))
    outcome = _search(space, device, tmp_path / "run")
    (only,) = outcomes(outcome.study)
    assert only.stage == TrialStage.EVALUATED, only.failure
    llm = outcome.study.trials[0].user_attrs["llm"]
    assert llm["heal"]["steps"] == 3 and llm["heal"]["tokens"] == 3 * 2 * 64
    assert only.screen_measurement.model_sha256 != only.measurement.model_sha256
    assert only.measurement.model_sha256 == only.artifact.sha256


def test_a_search_continues_where_it_stopped(tiny_hf, tmp_path):
    space, device = _write(tmp_path, tiny_hf, "search: {n_trials: 2, sampler: tpe, seed: 0}\n")
    _search(space, device, tmp_path / "run")
    outcome = _search(space, device, tmp_path / "run", n_trials=3)
    assert outcome.trials_run == 1 and len(outcome.study.trials) == 3


@pytest.mark.parametrize("change, message", [
    (("dataset:\n  text: {builtin: pydoc}", "dataset:\n  builtin: digits\n  text: {builtin: pydoc}"),
     "give exactly one of"),
    (("knobs:\n", "knobs:\n  width: {keep_ratios: [0.5, 1.0]}\n"),
     r"knobs.width does not apply to a language model.*llm_mlp"),
    (("budgets: {model_size_mb: 0.4}", "budgets: {latency_p90_ms: 3.0}"),
     "latency_p90_ms is not measured when a language model generates"),
    (("{causal_lm: hf}", "{causal_lm: hf, train: {epochs: 1}}"), "not for a causal_lm"),
    (("sequence_length: 64", "sequence_length: 60"), "not a multiple of sequence_length 60"),
])
def test_a_wrong_language_space_is_one_clear_error(tiny_hf, tmp_path, change, message):
    space, device = _write(tmp_path, tiny_hf, "search: {n_trials: 1}\n",
                           SPACE.replace(*change))
    with pytest.raises(ConfigError, match=message):
        _search(space, device, tmp_path / "run")
    assert not (tmp_path / "run" / "study.db").exists()


def test_an_image_profile_is_refused_for_a_language_model(tiny_hf, tmp_path):
    space, _ = _write(tmp_path, tiny_hf, "search: {n_trials: 1}\n")
    device = tmp_path / "onnx.yaml"
    device.write_text(GENAI_DEVICE.replace("runtime: {name: genai, intra_op_threads: 1}",
                                     "runtime: {intra_op_threads: 1}"))
    with pytest.raises(ConfigError, match="measured generating by the agent's genai runtime"):
        _search(space, device, tmp_path / "run")


def test_image_only_search_settings_are_refused_for_a_language_model(tiny_hf, tmp_path):
    space, device = _write(tmp_path, tiny_hf, "search: {n_trials: 1, sensitivity: true}\n")
    with pytest.raises(ConfigError, match="search.sensitivity is for image models"):
        _search(space, device, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_trials_below_one_are_refused_for_a_language_model_too(tiny_hf, tmp_path):
    space, device = _write(tmp_path, tiny_hf, "search: {n_trials: 2}\n")
    with pytest.raises(ConfigError, match=r"--trials 0: give the total number of trials"):
        _search(space, device, tmp_path / "run", n_trials=0)


def test_perplexity_is_an_objective_of_a_language_search(tiny_hf, tmp_path):
    """objectives: [accuracy, perplexity] (issue 22.7): each evaluated trial's second value is
    its exported folder's val perplexity, minimised; a rejected one's is the worst there is."""
    import math

    from hwnas.llm.report import rows

    space, device = _write(tmp_path, tiny_hf, "objectives: [accuracy, perplexity]\n"
                           "search: {n_trials: 3, seed: 1}\n")
    outcome = _search(space, device, tmp_path / "run")
    study = outcome.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_number = {t.number: t for t in study.get_trials()}
    found = rows(study)
    evaluated = [r for r in found if r["stage"] == "evaluated"]
    assert evaluated, found
    for row in found:
        values = by_number[row["trial"]].values
        if row["stage"] == "evaluated":
            assert values[1] == pytest.approx(row["perplexity_val"]) and 1 < values[1] < 1e4
        elif values is not None:
            assert math.isinf(values[1]) and values[1] > 0


@pytest.mark.parametrize("objectives, message", [
    ("[accuracy, mcq_accuracy]", "mcq_accuracy needs multiple-choice questions"),
    ("[accuracy, perplexity, perplexity]", "name each metric once"),
])
def test_a_language_objective_it_cannot_have_is_refused(tiny_hf, tmp_path, objectives, message):
    space, device = _write(tmp_path, tiny_hf, f"objectives: {objectives}\n"
                           "search: {n_trials: 1}\n")
    with pytest.raises(ConfigError, match=message):
        _search(space, device, tmp_path / "run")


def test_perplexity_is_refused_for_an_image_model(tmp_path):
    from hwnas.config import load_search_space
    from tests.conftest import DIGITS_SPACE

    path = tmp_path / "space.yaml"
    path.write_text(DIGITS_SPACE + "objectives: [accuracy, perplexity]\n")
    with pytest.raises(ConfigError, match="objectives: perplexity is a figure of a language model"):
        load_search_space(path)
    path.write_text(DIGITS_SPACE.replace("budgets: {", "budgets: {perplexity: 30.0, ", 1))
    with pytest.raises(ConfigError, match="budgets: perplexity is a figure of a language model"):
        load_search_space(path)


def test_a_perplexity_ceiling_is_decided_after_evaluation(tiny_hf, tmp_path):
    """budgets: {perplexity: X} (issue 22.7): not screened (nothing measured gives it), set on
    each evaluated trial from its folder's val perplexity; a ceiling no folder meets leaves the
    study with evaluated trials and no feasible one, each saying by how much it missed."""
    from hwnas.llm.report import rows

    generous, tight = "budgets: {model_size_mb: 0.4, perplexity: 1000000}", \
        "budgets: {model_size_mb: 0.4, perplexity: 1.0}"
    for budgets, meets in ((generous, True), (tight, False)):
        folder = tmp_path / ("generous" if meets else "tight")
        space, device = _write(folder, tiny_hf, "search: {n_trials: 2, seed: 1}\n",
                               SPACE.replace("budgets: {model_size_mb: 0.4}", budgets))
        study = _search(space, device, folder / "run").study
        by_number = {t.number: t for t in study.get_trials()}
        evaluated = [r for r in rows(study) if r["stage"] == "evaluated"]
        assert evaluated
        limit = 1e6 if meets else 1.0
        for row in evaluated:
            constraint = by_number[row["trial"]].constraints["perplexity"]
            assert constraint == pytest.approx(row["perplexity_val"] / limit - 1.0)
            assert (constraint <= 0) == meets
            assert (row["budgets"] == "meets") == meets
            if not meets:
                assert row["budgets"].startswith("perplexity over budget by")
