"""A short real search on digits through the real agent subprocess, end to end via the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hwnas.records import Candidate
from hwnas.report import best_feasible
from hwnas.search import RunInfo

HWNAS = str(Path(sys.executable).parent / "hwnas")


def hwnas(*args, timeout=900):
    done = subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

    folder = tmp_path_factory.mktemp("search")
    space, device = folder / "digits.yaml", folder / "device.yaml"
    space.write_text(DIGITS_SPACE + ENQUEUED)
    device.write_text(FAST_DEVICE)
    run_dir = folder / "run"
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress")
    return space, device, run_dir, output


def test_every_trial_records_candidate_artifact_and_measurement(searched):
    _, _, run_dir, output = searched
    study = RunInfo.load(run_dir).open_study()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    for trial in trials:
        Candidate.from_dict(trial.user_attrs["candidate"])  # rebuildable
        assert len(trial.user_attrs["artifact"]["sha256"]) == 64
        assert trial.user_attrs["measurement"]["latency_ms"]["p90"] > 0
        assert trial.user_attrs["measurement"]["model_sha256"] == trial.user_attrs["artifact"]["sha256"]
        assert set(trial.constraints) == {"latency_p90_ms", "model_size_mb"}
    assert "Pareto front" in output and "best feasible: trial" in output


def test_over_budget_candidates_are_rejected_before_finetuning(searched):
    _, _, run_dir, _ = searched
    study = RunInfo.load(run_dir).open_study()
    full_width = study.trials[1]  # the enqueued unpruned fp32 model: 0.5 MB > 0.1 MB
    assert full_width.user_attrs["stage"] == "rejected_before_finetune"
    assert full_width.constraints["model_size_mb"] > 0
    assert "finetune" not in full_width.user_attrs["timings_s"]
    assert "accuracy_val" not in full_width.user_attrs
    evaluated = [t for t in study.trials if t.user_attrs["stage"] == "evaluated"]
    assert evaluated
    for trial in evaluated:
        assert trial.user_attrs["timings_s"]["finetune"] > 0
        assert trial.values[0] == trial.user_attrs["accuracy_val"]
        assert 0.3 < trial.user_attrs["accuracy_test"] <= 1.0  # chance is 0.1


def test_reported_winner_meets_the_budget_when_re_measured(searched, tmp_path):
    _, device, run_dir, _ = searched
    study = RunInfo.load(run_dir).open_study()
    best = best_feasible(study)
    assert best is not None and all(v <= 0 for v in best.constraints.values())
    output = hwnas("export", run_dir, "--trial", best.number, "--out", tmp_path)
    model = next(tmp_path.glob("*.onnx"))
    card = json.loads(next(tmp_path.glob("*.card.json")).read_text())
    assert card["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert card["accuracy"]["test"] == best.user_attrs["accuracy_test"]
    assert card["candidate"] == best.user_attrs["candidate"]
    assert card["device_profile"]["name"] == "test-local"
    assert "model:" in output
    budgets = study.user_attrs["budgets"]
    assert model.stat().st_size / 1e6 <= budgets["model_size_mb"]
    remeasured = json.loads(hwnas("profile", model, "--device", device, "--json"))
    assert remeasured["model_sha256"] == card["model_sha256"]
    assert remeasured["latency_ms"]["p90"] <= budgets["latency_p90_ms"]


def test_report_writes_table_plot_markdown_and_html(searched):
    _, _, run_dir, _ = searched
    output = hwnas("report", run_dir)
    assert "val acc" in output and "p90 ms" in output
    report = run_dir / "report"
    assert (report / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "report.md").read_text()
    assert "## Pareto front" in markdown and "rejected before fine-tune: " in markdown
    assert "<table>" in (report / "report.html").read_text()


def test_export_refuses_a_rejected_trial(searched, tmp_path):
    _, _, run_dir, _ = searched
    done = subprocess.run([HWNAS, "export", str(run_dir), "--trial", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "rejected_before_finetune" in done.stderr


def test_running_again_continues_the_same_study(searched):
    space, device, run_dir, _ = searched
    before = RunInfo.load(run_dir).open_study().get_trials()
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", 7)
    assert "5 trials done, 2 to go" in output
    after = RunInfo.load(run_dir).open_study().get_trials()
    assert len(after) == 7
    assert [(t.params, t.values) for t in after[:5]] == [(t.params, t.values) for t in before]
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", 7)
    assert "7 trials done, 0 to go" in output
