"""A controller killed mid-trial: the re-run leaves no trial RUNNING and measures nothing twice."""

import dataclasses
import os
import signal
import subprocess
import time

import optuna
import pytest

from hwnas.records import TrialOutcome, TrialStage
from hwnas.run import RunFolder, outcomes
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE
from tests.search.test_search_e2e import HWNAS, hwnas


def running_with_screen(run_dir) -> TrialOutcome | None:
    try:
        study = RunFolder.load(run_dir).open_study()
    except Exception:  # not created yet
        return None
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        outcome = TrialOutcome.from_trial(trial)
        if outcome.screen_measurement is not None and outcome.finetune is None:
            return outcome
    return None


def _interruptible() -> None:
    """In the child before exec: SIGINT as an interactive terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_fine_tuning(controller: subprocess.Popen, run_dir) -> TrialOutcome:
    """The controller's first trial once it is measured and fine-tuning (10 minutes at most)."""
    deadline = time.monotonic() + 600
    victim = None
    while victim is None and time.monotonic() < deadline and controller.poll() is None:
        time.sleep(0.2)
        victim = running_with_screen(run_dir)
    assert victim is not None, "the first trial never reached fine-tuning"
    return victim


def test_killed_controller_is_retried_at_once_reusing_its_measurement(tmp_path):
    space, device, run_dir = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "run"
    # fine-tuning takes a while here, so that the kill lands after the screening measurement
    space.write_text(DIGITS_SPACE.replace("max_steps: 60, max_seconds: 60",
                                          "max_steps: 100000, max_seconds: 12") + ENQUEUED)
    device.write_text(FAST_DEVICE)
    controller = subprocess.Popen([HWNAS, "search", str(space), "--device", str(device),
                                   "--run-dir", str(run_dir), "--no-progress", "--trials", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        victim = wait_for_fine_tuning(controller, run_dir)
    finally:
        os.killpg(controller.pid, signal.SIGKILL)  # the controller and its local agent
        controller.wait()

    # at once: well inside Optuna's heartbeat grace period
    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", "2")
    assert f"trials [{victim.number}] were left running" in output
    found = outcomes(RunFolder.load(run_dir).open_study())
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    killed = found[victim.number]
    assert killed.stage == TrialStage.FAILED and "controller stopped" in killed.failure
    retry = next(o for o in found if o.number != victim.number and o.origin == victim.number)
    assert retry.candidate == victim.candidate
    assert retry.stage in (TrialStage.EVALUATED, TrialStage.REJECTED)
    # the same measurement, not a second one: the agent's own timestamps are identical
    assert retry.screen_measurement == victim.screen_measurement
    assert dataclasses.asdict(retry.screen_measurement)["agent_report"]["provenance"] == \
        dataclasses.asdict(victim.screen_measurement)["agent_report"]["provenance"]


def test_a_changed_search_space_is_refused_with_its_diff_then_forked(tmp_path):
    space, device, run_dir = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "run"
    space.write_text(DIGITS_SPACE + ENQUEUED)
    device.write_text(FAST_DEVICE)
    hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
          "--trials", "2")
    old = RunFolder.load(run_dir)
    before = outcomes(old.open_study())

    # only the trial count changed: the same study simply continues
    space.write_text(DIGITS_SPACE + ENQUEUED.replace("n_trials: 5", "n_trials: 9"))
    assert "2 trials done, 0 to go" in hwnas("search", space, "--device", device, "--run-dir",
                                             run_dir, "--no-progress", "--trials", "2")

    # the width knob becomes the ordered grid (stepped floats): the old choices lie on it
    changed = DIGITS_SPACE.replace("keep_ratios: [0.25, 0.5, 1.0]",
                                   "keep_range: {low: 0.25, high: 1.0, step: 0.125}")
    changed = changed.replace("budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}",
                              "budgets: {latency_p90_ms: 1.5, model_size_mb: 0.1}")
    space.write_text(changed + ENQUEUED)
    done = subprocess.run([HWNAS, "search", str(space), "--device", str(device), "--run-dir",
                           str(run_dir), "--no-progress", "--trials", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "knobs.width.keep_ratios: [0.25, 0.5, 1.0] -> '(unset)'" in done.stderr
    assert "knobs.width.keep_range.step: '(unset)' -> 0.125" in done.stderr
    assert "budgets.latency_p90_ms: 2.0 -> 1.5" in done.stderr
    assert "--run-dir" in done.stderr and "--fork" in done.stderr
    assert "pre-flight" not in done.stdout  # refused from the files, before any model work
    assert outcomes(old.open_study()) == before  # nothing was touched

    output = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                   "--trials", "3", "--fork")
    assert "2 of 2 trials kept as history" in output and "2 trials done, 1 to go" in output
    forked = RunFolder.load(run_dir)
    assert forked.study_name != old.study_name and forked.storage_url == old.storage_url
    found = outcomes(forked.open_study())
    assert len(found) == 3
    for kept, original in zip(found[:2], before):
        assert kept.copied_from == f"{old.study_name}#{original.number}"
        assert kept.candidate == original.candidate and kept.measurement == original.measurement
        assert kept.config_version == original.config_version != found[2].config_version
        assert dict(kept.constraints)["latency_p90_ms"] == pytest.approx(
            kept.measurement.latency_ms_p90 / 1.5 - 1)  # re-scored under the new budget
    assert outcomes(old.open_study()) == before  # the old study is kept as it was
    assert len(list((run_dir / "configs").iterdir())) == 3  # every version kept
    # the history and the new trial are stepped floats of the grid, so the sampler orders them
    for trial in forked.open_study().get_trials():
        for stage in ("stage1", "stage2", "stage3"):
            grid = trial.distributions[f"keep_{stage}"]
            assert isinstance(grid, optuna.distributions.FloatDistribution) and grid.step == 0.125
            assert trial.params[f"keep_{stage}"] in (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def test_an_interrupted_engine_search_leaves_no_trial_running(tmp_path):
    """Ctrl-C (SIGINT, as `timeout -s INT` sends it) during a trial of the engine: the trial
    is failed and its candidate retried by the next run, reusing its measurement (a new user
    found it left RUNNING, which `hwnas status` then showed as a stale worker).

    The latency budget is out of reach of any load, so the trial always reaches its fine-tune
    (a screening measurement over 2 ms would reject it first and end the one-trial run)."""
    space, device, run_dir = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "run"
    # 30 s of fine-tuning: the SIGINT must land inside it even where the study is slow to
    # read (a loaded CI machine once saw the trial finish before the signal came)
    generous = "latency_p90_ms: 1000.0"
    space.write_text(DIGITS_SPACE.replace("max_steps: 60, max_seconds: 60",
                                          "max_steps: 100000, max_seconds: 30")
                     .replace("latency_p90_ms: 2.0", generous)
                     + "search: {n_trials: 1, seed: 3, sampler: engine}\n")
    device.write_text(FAST_DEVICE.replace("latency_p90_ms: 2.0", generous))
    assert space.read_text().count(generous) == device.read_text().count(generous) == 1
    # Ctrl-C as a terminal delivers it: a shell starts a background job with SIGINT ignored
    # (POSIX), the ignore survives exec and Python then never raises KeyboardInterrupt; a
    # test suite run in the background (`.ci/run &`) passed that on, and the controller
    # rightly ignored the signal (exit 0 twice on CI, passing in every foreground run)
    controller = subprocess.Popen([HWNAS, "search", str(space), "--device", str(device),
                                   "--run-dir", str(run_dir), "--no-progress"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=_interruptible)
    try:
        victim = wait_for_fine_tuning(controller, run_dir)
        controller.send_signal(signal.SIGINT)
        _, stderr = controller.communicate(timeout=120)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    assert controller.returncode == 130 and "interrupted" in stderr, stderr[-2000:]
    found = outcomes(RunFolder.load(run_dir).open_study())
    assert not [o for o in found if o.stage == TrialStage.RUNNING]
    assert found[victim.number].stage == TrialStage.FAILED

    hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress")
    found = outcomes(RunFolder.load(run_dir).open_study())
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    retry = next(o for o in found if o.number != victim.number and o.origin == victim.number)
    assert retry.candidate == victim.candidate and retry.stage in (TrialStage.EVALUATED,
                                                                   TrialStage.REJECTED)
    assert retry.screen_measurement == victim.screen_measurement  # not measured twice
