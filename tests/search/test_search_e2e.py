"""A short real search on digits through the real agent subprocess, end to end via the CLI."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hwnas.records import StudyRecord, TrialOutcome, TrialStage
from hwnas.run import RunFolder, outcomes
from hwnas.pareto import best_feasible, study_directions

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
    study = RunFolder.load(run_dir).open_study()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    for trial in trials:
        outcome = TrialOutcome.from_trial(trial)
        assert outcome.candidate is not None and outcome.candidate.precision_plan
        assert len(outcome.artifact.sha256) == 64
        assert outcome.measurement.latency_ms_p90 > 0
        assert outcome.measurement.model_sha256 == outcome.artifact.sha256
        assert outcome.screen_measurement is not None and outcome.device == "test-local"
        assert {name for name, _ in outcome.constraints} == {"latency_p90_ms", "model_size_mb"}
        assert outcome.config_version and (run_dir / "configs" / outcome.config_version).is_dir()
    assert "Pareto front" in output and "best feasible: trial" in output


def test_the_trial_record_round_trips_through_the_study(searched):
    """TrialOutcome alone writes the attributes: what it writes, it reads back unchanged."""
    import optuna

    _, _, run_dir, _ = searched
    study = RunFolder.load(run_dir).open_study()
    for trial in study.get_trials():
        outcome = TrialOutcome.from_trial(trial)
        copy = optuna.create_study(directions=["maximize", "minimize"])
        fresh = copy.ask()
        outcome.write(fresh)
        copy.tell(fresh, list(trial.values))
        again = TrialOutcome.from_trial(copy.trials[0])
        assert again == dataclasses.replace(outcome, number=0, constraints=())


def test_over_budget_candidates_are_rejected_before_finetuning(searched):
    _, _, run_dir, _ = searched
    found = outcomes(RunFolder.load(run_dir).open_study())
    full_width = found[1]  # the enqueued unpruned fp32 model: 0.5 MB > 0.1 MB
    assert full_width.stage == TrialStage.REJECTED
    assert "model_size_mb over budget" in full_width.rejection
    assert dict(full_width.constraints)["model_size_mb"] > 0
    assert "finetune" not in dict(full_width.timings_s)
    assert full_width.accuracy_val is None and full_width.finetune is None
    assert not full_width.feasible and not full_width.deployable
    evaluated = [o for o in found if o.stage == TrialStage.EVALUATED]
    assert evaluated
    for outcome in evaluated:
        assert dict(outcome.timings_s)["finetune"] > 0 and outcome.finetune.steps > 0
        assert outcome.values[0] == outcome.accuracy_val
        assert 0.3 < outcome.accuracy_test <= 1.0  # chance is 0.1


def test_reported_winner_meets_the_budget_when_re_measured(searched, tmp_path):
    _, device, run_dir, _ = searched
    study = RunFolder.load(run_dir).open_study()
    best = best_feasible(outcomes(study))
    assert best is not None and all(v <= 0 for _, v in best.constraints)
    output = hwnas("export", run_dir, "--trial", best.number)  # into the run folder by default
    exported = run_dir / "exported"
    model = next(exported.glob(f"*-trial{best.number}.onnx"))
    card = json.loads(next(exported.glob(f"*-trial{best.number}.card.json")).read_text())
    assert card["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert card["accuracy"]["test"] == best.accuracy_test
    assert card["candidate"] == best.candidate.to_dict()
    assert card["device_profile"]["name"] == "test-local"
    assert card["search_space"]["name"] == "digits-test"
    assert "model:" in output
    budgets = dict(StudyRecord.from_study(study).budgets)
    assert model.stat().st_size / 1e6 <= budgets["model_size_mb"]
    remeasured = json.loads(hwnas("profile", model, "--device", device, "--json"))[0]["measurement"]
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
    assert "<table class='sortable'>" in (report / "report.html").read_text()


def test_export_refuses_a_rejected_trial(searched, tmp_path):
    _, _, run_dir, _ = searched
    done = subprocess.run([HWNAS, "export", str(run_dir), "--trial", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "rejected_before_finetune" in done.stderr


def test_running_again_continues_the_same_study(searched):
    space, device, run_dir, _ = searched
    before = RunFolder.load(run_dir).open_study().get_trials()
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", 7)
    assert "5 trials done, 2 to go" in output
    after = RunFolder.load(run_dir).open_study().get_trials()
    assert len(after) == 7
    assert [(t.params, t.values) for t in after[:5]] == [(t.params, t.values) for t in before]
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", 7)
    assert "7 trials done, 0 to go" in output


@pytest.mark.parametrize("verb", ["report", "export"])
def test_report_and_export_start_without_torch_paramiko_or_the_search(searched, tmp_path, verb):
    """Reading a run is cheap: neither verb imports torch, paramiko or hwnas.search."""
    _, _, run_dir, _ = searched
    best = best_feasible(outcomes(RunFolder.load(run_dir).open_study()))
    argv = [verb, str(run_dir), "--out", str(tmp_path)] + (
        ["--trial", str(best.number)] if verb == "export" else [])
    code = ("import sys\nfrom hwnas.cli import main\n"
            f"code = main({argv!r})\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'paramiko', "
            "'torch_pruning') or m.startswith('hwnas.search'))\n"
            "print('HEAVY', heavy)\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert any(tmp_path.iterdir())  # it did its work


def test_optuna_dashboard_shows_the_searched_budgets_and_feasibility(searched):
    """The real run in optuna-dashboard's own server: the budgets per trial and the feasible
    marks are what hwnas recorded, and each evaluated trial lists its kept ONNX bytes and
    fine-tuned PyTorch model."""
    pytest.importorskip("optuna_dashboard")
    from tests.report.test_dashboard import get_json, served

    _, _, run_dir, _ = searched
    run = RunFolder.load(run_dir)
    study = run.open_study()
    with served(run) as base:
        detail = get_json(f"{base}/api/studies/{study._study_id}?after=0")
    shown = {t["number"]: t for t in detail["trials"]}
    assert len(shown) == len(study.trials)
    [parent] = detail["artifacts"]  # the study's own: the parent's weights every worker shares
    assert parent["filename"].endswith(".pt")
    for outcome in outcomes(study):
        trial = shown[outcome.number]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert json.loads(attrs["constraints"]) == dict(outcome.constraints)
        assert all(v <= 0 for v in trial["constraints"]) == \
            all(v <= 0 for _, v in outcome.constraints)
        kept = {a["filename"] for a in trial["artifacts"]}
        sha256 = outcome.artifact.sha256
        # a candidate rejected by screening was never fine-tuned: nothing of it is kept
        assert kept == ({f"{sha256}.onnx", f"{sha256}.pt", f"{sha256}.plan.json"}
                        if outcome.deployable else set())


def test_an_export_stopped_by_a_signal_leaves_the_whole_export_or_nothing(searched, tmp_path):
    """SIGTERM at several moments of a real export (from the first file it writes on): the
    destination holds all four files or none, never an .onnx without its card; nothing
    temporary is left; an interrupted export says so in one line."""
    import signal
    import time

    _, _, run_dir, _ = searched
    best = best_feasible(outcomes(RunFolder.load(run_dir).open_study()))
    stem = f"{RunFolder.load(run_dir).study_name}-trial{best.number}"
    whole = {f"{stem}{suffix}" for suffix in (".onnx", ".pt", ".plan.json", ".card.json")}
    seen = []
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        out = tmp_path / f"after-{delay}"
        out.mkdir()
        export = subprocess.Popen([HWNAS, "export", str(run_dir), "--trial", str(best.number),
                                   "--out", str(out)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        while not any(out.iterdir()) and export.poll() is None:
            time.sleep(0.001)  # until the export writes its first file
        time.sleep(delay)
        export.send_signal(signal.SIGTERM)
        stdout, stderr = export.communicate(timeout=120)
        seen.append((delay, sorted(p.name for p in out.iterdir()), export.returncode, stderr))
    for delay, left, code, stderr in seen:
        assert set(left) in (set(), whole), seen
        if left:  # it was in place first: finished (or terminated on its way out)
            assert code in (0, -signal.SIGTERM), seen
        else:
            assert code == 143, seen
            assert stderr == f"hwnas: export interrupted (SIGTERM): nothing written to " \
                             f"{tmp_path / f'after-{delay}'}\n", seen
    assert not seen[0][1], f"the first SIGTERM came after the export was done: {seen}"
    done = subprocess.run([HWNAS, "export", str(run_dir), "--trial", str(best.number), "--out",
                           str(tmp_path / "clean")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and {p.name for p in (tmp_path / "clean").iterdir()} == whole


def test_the_base_and_best_models_time_per_module_is_kept_and_reported(searched):
    """Where the time goes (issue 24.1): the base model's layer profile is taken with its one
    measurement, the best feasible model's once at the end of the run; each node's time is
    summed per module of the model, and the report shows both side by side."""
    from hwnas.layers import kept_unit_times

    _, _, run_dir, output = searched
    study = RunFolder.load(run_dir).open_study()
    # as the search picks it: a tie in accuracy goes to the front model (on digits two trials
    # may be equally accurate; without the directions the first would be taken)
    best = best_feasible(outcomes(study), study_directions(study))
    kept = kept_unit_times(study.user_attrs)
    assert [label for label, _, _ in kept] == ["base model (fp32)",
                                               f"best feasible (trial {best.number})"]
    assert study.user_attrs["unit_times"]["best"]["model_sha256"] == best.artifact.sha256
    for _, layers, units in kept:
        assert layers["runs"] > 0 and layers["headline_ms_p50"] > 0
        assert abs(sum(u.share for u in units) - 1.0) < 1e-6
        assert [u.median_us for u in units] == sorted((u.median_us for u in units), reverse=True)
        modules = {u.unit.split(".")[0] for u in units if not u.unit.startswith("(")}
        assert {"stage1", "stage2"} <= modules, units  # the model's own modules, not op types
    assert "base model (unpruned, fp32)" in output and "most time in stage" in output
    hwnas("report", run_dir)
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Where the time goes (per module, on the device)" in report
    assert f"best feasible (trial {best.number}) us / share" in report
    assert "<pre>" in (run_dir / "report" / "report.html").read_text()
