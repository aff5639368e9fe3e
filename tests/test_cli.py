import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_DEVICE

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("argv, words", [
    (["hwnas", "--help"], ["search", "profile", "report", "export"]),
    (["hwnas", "search", "--help"], ["--device", "--trials", "--run-dir"]),
    (["hwnas", "profile", "--help"], ["--device", "--json"]),
    (["hwnas", "report", "--help"], ["study", "--out"]),
    (["hwnas", "export", "--help"], ["--trial", "--out"]),
    (["hwnas", "dashboard", "--help"], ["study", "--host", "--port"]),
    (["hwnas-agent", "--help"], ["serve", "measure", "facts", "version", "unit"]),
    (["hwnas-agent", "serve", "--help"], ["--state-dir", "--port"]),
    (["hwnas-agent", "measure", "--help"], ["--providers", "--threads", "--min-seconds"]),
])
def test_every_verb_has_help(argv, words):
    done = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True)
    assert done.returncode == 0
    for word in words:
        assert word in done.stdout


def test_config_error_is_one_clear_line_and_exit_2(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("name: x\nbase_model: {builtin: small_cnn}\ndataset: {builtin: digits}\n"
                     "serch: {n_trials: 3}\n")
    done = subprocess.run([str(BIN / "hwnas"), "search", str(space)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{space}: invalid search space" in done.stderr and "key 'serch'" in done.stderr


def test_agent_one_shot_measure_prints_json(tmp_path, models_dir):
    import json

    done = subprocess.run([str(BIN / "hwnas-agent"), "measure", str(models_dir / "small.onnx"),
                           "--min-seconds", "0.1", "--min-iterations", "20"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["iterations"] >= 20 and result["latency_ms"]["p50"] > 0


def test_agent_facts_and_version():
    import json

    facts = json.loads(subprocess.run([str(BIN / "hwnas-agent"), "facts"], capture_output=True,
                                      text=True).stdout)
    assert facts["cpu_count"] >= 1 and "onnxruntime" in facts["runtimes"]
    version = json.loads(subprocess.run([str(BIN / "hwnas-agent"), "version"], capture_output=True,
                                        text=True).stdout)
    from hwnas_agent.protocol import PROTOCOL_VERSION

    assert version["protocol_version"] == PROTOCOL_VERSION


def test_systemd_unit_restarts_on_failure_and_serves_loopback_only():
    import configparser

    done = subprocess.run([str(BIN / "hwnas-agent"), "unit"], capture_output=True, text=True)
    assert done.returncode == 0
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(done.stdout)
    assert unit["Service"]["Restart"] == "on-failure"
    exec_start = unit["Service"]["ExecStart"]
    assert exec_start.startswith(sys.executable) and "--host 127.0.0.1" in exec_start
    assert " serve " in exec_start and unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.parametrize("args, message", [
    (["--trials", "-3"], "argument --trials: -3 is not a positive number"),
    (["--trials", "0"], "argument --trials: 0 is not a positive number"),
    (["--trials", "many"], "argument --trials: 'many' is not a whole number"),
])
def test_bad_trial_counts_are_refused(args, message):
    done = subprocess.run([str(BIN / "hwnas"), "search", *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_run_dir_under_a_file_is_one_clear_error(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    done = subprocess.run([str(BIN / "hwnas"), "search", "--run-dir", str(blocker / "run")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{blocker} is a file, not a folder" in done.stderr
    debug = subprocess.run([str(BIN / "hwnas"), "--debug", "search", "--run-dir",
                            str(blocker / "run")], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


@pytest.mark.parametrize("argv, words", [
    (["search", "--trials", "0"], "hwnas search: error: argument --trials: 0 is not a positive"),
    (["frob"], "hwnas: error: argument VERB: invalid choice: 'frob'"),
    (["export", "runs/x"], "hwnas export: error: the following arguments are required: --trial"),
])
def test_a_wrong_argument_is_one_line_too(argv, words):
    """argparse's usage block made two or more lines of every wrong argument."""
    done = subprocess.run([str(BIN / "hwnas"), *argv], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(words) and "--help" in done.stderr


@pytest.mark.parametrize("extra, words", [
    ("search: {seed: 100000000000000000000000000000}\n",
     ["key 'search.seed': Input should be less than or equal to 4294967295"]),
    ("budgets: {latency_p90_ms: 1e400}\n",
     ["key 'budgets.latency_p90_ms': expected a finite number", "(got '1e400')"]),
])
def test_a_number_out_of_the_samplers_or_budgets_range_is_refused_before_any_work(
        tmp_path, extra, words):
    space = tmp_path / "s.yaml"
    space.write_text("name: x\nbase_model: {builtin: small_cnn}\ndataset: {builtin: digits}\n"
                     + extra)
    device = tmp_path / "d.yaml"
    device.write_text(FAST_DEVICE)
    done = subprocess.run([str(BIN / "hwnas"), "search", str(space), "--device", str(device),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{space}: invalid search space" in done.stderr
    assert all(word in done.stderr for word in words), done.stderr
    assert not (tmp_path / "run").exists()
