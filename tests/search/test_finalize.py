"""`hwnas finalize`: a tiny real digits search, then its best feasible trial fine-tuned again
for longer, its new bytes measured by the real local agent and recorded as a trial."""

import optuna
import pytest

from hwnas.cli import main
from hwnas.errors import ConfigError
from hwnas.records import TrialStage
from hwnas.report.status import status_text, study_status
from hwnas.run import RunFolder, completed_search_trials, outcomes
from hwnas.pareto import best_feasible
from hwnas.search import run_search
from hwnas.search.finalize import finalize_run
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

SEARCH_STEPS = 20
FINAL_STEPS = 120


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finalize")
    space, device, run_dir = folder / "digits.yaml", folder / "device.yaml", folder / "run"
    space.write_text(DIGITS_SPACE.replace("max_steps: 60", f"max_steps: {SEARCH_STEPS}")
                     + ENQUEUED.replace("n_trials: 5", "n_trials: 3"))
    device.write_text(FAST_DEVICE)
    run_search(space, [device], run_dir, progress=False, log=lambda line: None)
    before = outcomes(RunFolder.load(run_dir).open_study())
    results = finalize_run(run_dir, top=1, max_steps=FINAL_STEPS, log=lambda line: None)
    return space, device, run_dir, before, results


def test_the_best_feasible_trial_is_finalized_as_a_new_measured_trial(finalized):
    _, _, run_dir, before, results = finalized
    source = best_feasible(before)
    assert source is not None and len(results) == 1 and not results[0].reused
    study = RunFolder.load(run_dir).open_study()
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(before) + 1
    assert trials[-1].state == optuna.trial.TrialState.COMPLETE
    done = outcomes(study)[-1]
    assert done.number == results[0].outcome.number == len(before)
    assert done.finalized_from == source.number and results[0].source.number == source.number
    assert done.stage == TrialStage.EVALUATED and done.candidate == source.candidate
    assert done.finetune.steps > source.finetune.steps
    assert done.finetune.steps == FINAL_STEPS  # digits: 120 steps end well inside the time limit
    # its own bytes, evaluated and measured
    assert done.artifact.sha256 != source.artifact.sha256
    assert done.measurement.model_sha256 == done.artifact.sha256
    assert done.measurement.latency_ms_p90 > 0
    assert 0.0 < done.accuracy_val <= 1.0 and 0.0 < done.accuracy_test <= 1.0
    assert done.output_fidelity is not None and done.output_fidelity.samples > 0
    assert {name for name, _ in done.constraints} == {name for name, _ in source.constraints}
    assert done.values is not None and done.values[0] == done.accuracy_val
    # the exact bytes and PyTorch weights are kept, like any evaluated trial's
    run = RunFolder.load(run_dir)
    assert run.kept_artifact(done, study).sha256 == done.artifact.sha256
    assert run.kept_pytorch(done, study) is not None


def test_the_report_shows_the_finalized_trial(finalized, capsys):
    _, _, run_dir, _, results = finalized
    done = results[0].outcome
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    markdown = (run_dir / "report" / "report.md").read_text()
    note = f"finalized from trial {done.finalized_from}"
    assert note in markdown and f"finalized ({done.finetune.steps} steps)" in markdown
    if done.feasible:  # a finalized model may break a budget its short version met
        assert note in printed  # on the front the terminal shows
    # `hwnas status`: not one of the search trials wanted
    assert "trials: 3 done of 3 wanted" in status_text(study_status(str(run_dir)))
    assert study_status(str(run_dir))["stages"]["finalized"] == 1


def test_a_second_finalize_reuses_the_finalized_trial(finalized, capsys):
    _, _, run_dir, before, results = finalized
    assert main(["finalize", str(run_dir), "--top", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"finalized from trial {results[0].source.number}" in printed
    assert len(RunFolder.load(run_dir).open_study().get_trials(deepcopy=False)) == len(before) + 1


def test_a_resumed_search_does_not_count_the_finalized_trial(finalized):
    space, device, run_dir, before, results = finalized
    source = results[0].source
    study = RunFolder.load(run_dir).open_study()
    assert completed_search_trials(study) == 3
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials()) == 4
    # the same candidate again: the search's own trial is its twin, never the finalized one
    study.enqueue_trial(study.trials[source.number].params)
    # one more search trial wanted: the finalized trial must not stand for it
    outcome = run_search(space, [device], run_dir, n_trials=4, progress=False,
                         log=lambda line: None)
    assert outcome.trials_run == 1
    found = outcomes(RunFolder.load(run_dir).open_study())
    assert len(found) == len(before) + 2
    assert found[-1].finalized_from is None
    assert found[-1].copied_from == f"{study.study_name}#{source.number}"
    assert found[-1].finetune.steps == source.finetune.steps


def test_finalize_refuses_what_it_cannot_do(finalized, capsys):
    _, _, run_dir, _, _ = finalized
    with pytest.raises(ConfigError, match=r"--top 0: .*1 or more"):
        finalize_run(run_dir, top=0)
    with pytest.raises(SystemExit) as exit_:
        main(["finalize", str(run_dir), "--top", "0"])
    assert exit_.value.code == 2
    assert "--top: 0 is not a positive number" in capsys.readouterr().err
    # a folder that is not a run: one line, exit 2
    assert main(["finalize", str(run_dir / "report")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hwnas: error:") and "not a search run folder" in error
    assert "\n" not in error


def test_an_interrupted_finalize_is_not_retried_by_the_search(tmp_path):
    """A finalize killed after it added its trial: the heartbeat retry leaves the candidate
    alone (the search never re-runs a finalized trial), while a search trial is retried."""
    from optuna.distributions import CategoricalDistribution

    from hwnas.records import TrialOutcome
    from hwnas.storage import RetryAbandoned

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=["maximize", "minimize"])
    for finalized_from in (0, None):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params={"keep": 0.5},
            distributions={"keep": CategoricalDistribution([0.5, 1.0])},
            user_attrs=TrialOutcome(TrialStage.RUNNING, finalized_from=finalized_from)
            .attributes()))
    finalizing, searching = study.get_trials()
    RetryAbandoned()(study, finalizing)
    assert len(study.get_trials()) == 2
    RetryAbandoned()(study, searching)
    assert [t.state for t in study.get_trials()][-1] == optuna.trial.TrialState.WAITING


def test_a_run_with_no_feasible_trial_has_nothing_to_finalize(tmp_path, capsys):
    space, device, run_dir = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "run"
    # one trial: the unpruned fp32 model, 0.5 MB over the 0.1 MB budget (rejected at screening)
    unpruned = ENQUEUED.split("    - ")[2]
    space.write_text(DIGITS_SPACE + "search:\n  n_trials: 1\n  seed: 3\n  enqueue:\n    - "
                     + unpruned)
    device.write_text(FAST_DEVICE)
    run_search(space, [device], run_dir, progress=False, log=lambda line: None)
    assert not any(o.feasible for o in outcomes(RunFolder.load(run_dir).open_study()))
    assert main(["finalize", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert "no search trial meets every budget yet: nothing to finalize" in error
    assert "\n" not in error
    assert len(RunFolder.load(run_dir).open_study().get_trials()) == 1  # nothing added


def test_finalize_shows_the_long_fine_tune_as_a_progress_bar(finalized, capsys):
    """Last in this file: it adds a finalized trial the tests above do not expect."""
    _, _, run_dir, _, results = finalized
    source = results[0].source.number
    assert main(["finalize", str(run_dir), "--again", "--max-steps", "40"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    bar = [line for line in lines if line.startswith(f"finalize trial {source}:")]
    assert "\r" not in "".join(lines) and len(bar) >= 2, lines
    assert "40/40" in bar[-1] and "loss " in bar[-1]
    assert main(["finalize", str(run_dir), "--again", "--max-steps", "10",
                 "--no-progress"]) == 0
    assert "finalize trial" not in capsys.readouterr().err
