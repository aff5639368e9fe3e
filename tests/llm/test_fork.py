"""`hwnas search --fork` of a language study: the copies of its trials keep their language
record (perplexity, the kept folder), so that a perplexity objective and budget on the fork
read the copies' own values, not the worst there is."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.records import TrialStage
from hwnas.run import outcomes
from tests.llm.test_search import SPACE, _search, _write

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hwnas.testing.llm import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("llm") / "hf", "llama")


def test_a_fork_keeps_the_perplexity_of_its_copies(tiny_hf, tmp_path):
    from hwnas_agent.manifest import from_folder

    budgets = "budgets: {model_size_mb: 1.0, perplexity: 1000000}"
    space, device = _write(tmp_path, tiny_hf, "objectives: [accuracy, perplexity]\n"
                           "search: {n_trials: 2, seed: 1}\n",
                           SPACE.replace("budgets: {model_size_mb: 0.4}", budgets))
    old = _search(space, device, tmp_path / "run").study
    perplexity = {t.number: t.user_attrs["llm"]["perplexity_val"] for t in old.trials
                  if (t.user_attrs.get("llm") or {}).get("perplexity_val")}
    assert perplexity
    # a tighter perplexity ceiling every old trial still meets: a fork that keeps them
    space.write_text(space.read_text().replace("perplexity: 1000000", "perplexity: 500000"))
    forked = _search(space, device, tmp_path / "run", fork=True, n_trials=3)
    study = forked.study
    assert "@" in study.study_name
    copies = [t for t in study.trials if t.user_attrs.get("copied_from")]
    assert {int(t.user_attrs["copied_from"].rsplit("#", 1)[1]) for t in copies} == \
        set(perplexity)
    for trial in copies:
        number = int(trial.user_attrs["copied_from"].rsplit("#", 1)[1])
        llm = trial.user_attrs["llm"]
        assert llm["perplexity_val"] == pytest.approx(perplexity[number])
        assert trial.values[1] == pytest.approx(perplexity[number])  # not the worst value
        assert trial.constraints["perplexity"] == pytest.approx(perplexity[number] / 500000 - 1)
    # the fork's own trials keep their folders beside the copies', not over them
    for o in outcomes(study):
        llm = study.trials[o.number].user_attrs.get("llm") or {}
        if o.stage == TrialStage.EVALUATED:
            folder = tmp_path / "run" / llm["folder"]
            assert from_folder(str(folder), "model.onnx").sha256 == o.artifact.sha256
            if o.copied_from is None:
                assert llm["folder"].startswith(f"models/{study.study_name.split('@')[1]}/")
    # the same command again goes on in the fork, not in the study it forked
    had, old_had = len(study.trials), len(old.trials)
    again = _search(space, device, tmp_path / "run", n_trials=had + 1).study
    assert again.study_name == study.study_name and len(again.trials) == had + 1
    assert len(old.trials) == old_had
