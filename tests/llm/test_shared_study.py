"""A language model's study on a shared storage (issue 22): `hwnas search --storage URL` makes
it in a real PostgreSQL, `hwnas worker` joins it on the same model folder and text, every
candidate is run once, the kept folders reach every controller through the study's artifact
store, and a worker whose files differ is refused naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from hwnas.errors import ConfigError
from hwnas.records import TrialStage
from hwnas.run import RunFolder, outcomes
from hwnas.storage import make_storage
from tests.conftest import GENAI_DEVICE
from tests.llm.test_search import SPACE
from tests.search import test_distributed as distributed

pytest.importorskip("onnxruntime_genai")

postgres = distributed.postgres  # a private cluster for the module, a database per test
study_url = distributed.study_url
STUDY = "tiny-llm--dev0"


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hwnas.testing.llm import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("llm") / "hf", "llama")


def _configs(tmp_path: Path, hf: Path, n_trials: int) -> tuple[Path, list[Path]]:
    shutil.copytree(hf, tmp_path / "hf")
    space = tmp_path / "space.yaml"  # a relative model path: resolved where the study began
    space.write_text(SPACE.replace("budgets: {model_size_mb: 0.4}", "budgets: {model_size_mb: 1.0}")
                     + f"search: {{n_trials: {n_trials}, sampler: engine, seed: 0}}\n")
    devices = []
    for index in range(2):
        path = tmp_path / f"dev{index}.yaml"
        path.write_text(GENAI_DEVICE.replace("name: test-genai", f"name: dev{index}\npool: cpu"))
        devices.append(path)
    return space, devices


def _sources(url: str) -> dict | None:
    try:
        study = optuna.load_study(study_name=STUDY, storage=make_storage(url))
    except KeyError:
        return None
    return study.user_attrs.get("llm_sources")


def test_a_worker_joins_a_language_study_and_no_candidate_runs_twice(tiny_hf, tmp_path,
                                                                     study_url):
    from hwnas.llm.card import export_language_trial
    from hwnas.search import run_worker

    space, devices = _configs(tmp_path, tiny_hf, n_trials=6)
    folders = [tmp_path / "c0", tmp_path / "c1"]
    for folder in folders:
        folder.mkdir()
    primary = distributed.start("search", space, "--device", devices[0], "--storage", study_url,
                                "--run-dir", folders[0], "--no-progress", folder=folders[0])
    distributed.wait_for(lambda: _sources(study_url) or primary.poll() is not None,
                         what="the primary to record the study's model and text")
    worker = distributed.start("worker", "--storage", study_url, "--study", STUDY, "--device",
                               devices[1], "--run-dir", folders[1], "--no-progress",
                               folder=folders[1])
    logs = distributed.finish([primary, worker], folders, timeout=900)
    assert [primary.returncode, worker.returncode] == [0, 0], "\n".join(logs)[-4000:]

    study = optuna.load_study(study_name=STUDY, storage=make_storage(study_url))
    found = outcomes(study)
    assert sum(o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED) for o in found) >= 6
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    distributed.never_measured_twice(found)  # no candidate sliced, measured, evaluated twice
    assert not [o.copied_from for o in found if o.copied_from is not None]
    # each of the engine's proposals was claimed in the study before its trial ran
    assert all(t.system_attrs.get("engine_claim") for t in study.trials
               if t.user_attrs.get("proposed_by") not in ("enqueued", None))
    assert {t.user_attrs.get("proposed_by") for t in study.trials} - {"enqueued", None}
    sources = study.user_attrs["llm_sources"]
    assert sources["root"] == str(tmp_path.resolve())
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= set(sources["model_files"])
    by_worker = [o for o in found if o.device == "dev1"]
    assert by_worker, "the worker ran no trial:\n" + logs[1][-3000:]
    for o in by_worker:
        assert o.stage == TrialStage.EVALUATED, o.failure
        llm = study.trials[o.number].user_attrs["llm"]
        assert llm["perplexity_val"] > 1 and (folders[1] / llm["folder"]).is_dir()
    # the front, on the test text, once, by the primary; a worker's folder from the store
    tested = study.user_attrs["llm_test"]
    assert tested and all(v["perplexity"] > 1 for v in tested.values())
    assert "front is evaluated on the test text by the study's" in \
        (folders[1] / "run.log").read_text() + logs[1]
    primary_run = RunFolder.load(folders[0])
    mine = by_worker[0]
    exported = export_language_trial(primary_run, study, mine, tmp_path / "out")
    from hwnas_agent.manifest import from_folder

    assert from_folder(str(exported["model"]), "model.onnx").sha256 == mine.artifact.sha256

    # another machine's folder: one file differs -> refused by name, before the model loads
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "hf", other / "hf")
    config = other / "hf" / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"model_max_length_note": 1,', 1))
    with pytest.raises(ConfigError, match=r"tokenizer_config.json \(sha256 .* here"):
        run_worker(study_url, STUDY, devices[1], tmp_path / "c2", progress=False,
                   log=lambda _: None, files_root=other)
    with pytest.raises(ConfigError, match="base model folder is not on this machine"):
        run_worker(study_url, STUDY, devices[1], tmp_path / "c3", progress=False,
                   log=lambda _: None, files_root=tmp_path / "nowhere")


def test_text_that_differs_from_the_study_is_refused_by_split():
    from hwnas.llm.shared import LanguageSources, check_text

    recorded = LanguageSources("/r", "/r/hf", {"config.json": "a" * 64},
                               (("train", "t.txt", "b" * 64), ("val", "v.txt", "c" * 64)))
    check_text("s", recorded, (("train", "x/t.txt", "b" * 64), ("val", "x/v.txt", "c" * 64)))
    with pytest.raises(ConfigError, match=r"the val text x/v.txt \(sha256 dddddddddddd here, "
                                          r"cccccccccccc in the study"):
        check_text("s", recorded, (("train", "x/t.txt", "b" * 64), ("val", "x/v.txt", "d" * 64)))


def test_the_primary_waits_for_a_running_trial_says_so_and_gives_up_in_time():
    """A trial another live controller still runs: the primary says which, every so often, and
    evaluates the front as it stands after its patience (it never waits forever)."""
    import optuna

    from hwnas.llm.search import wait_for_other_controllers
    from hwnas.records import TrialOutcome, TrialStage
    from hwnas.search.controllers import controller_id

    study = optuna.create_study()
    trial = study.ask()
    for key, value in TrialOutcome(TrialStage.RUNNING, controller=controller_id()).attributes().items():
        trial.set_user_attr(key, value)  # a live controller's (this process's) running trial
    said: list[str] = []
    wait_for_other_controllers(study, said.append, poll_s=0.05, patience_s=0.5, every_s=0.2)
    assert said[0].startswith(f"waiting for trials [{trial.number}]")
    assert 2 <= len(said) <= 6 and "as it stands" in said[-1] and "run this command again" in said[-1]
    study.tell(trial, 0.5)
    said.clear()
    wait_for_other_controllers(study, said.append, poll_s=0.05, patience_s=0.5)
    assert said == []  # nothing running: no wait, no word
