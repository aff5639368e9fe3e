"""`hwnas agent install` over a real sshd, then a search on the installed agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from hwnas.run import RunFolder
from tests.conftest import DIGITS_SPACE
from hwnas.testing.sshd import free_port

HWNAS = str(Path(sys.executable).parent / "hwnas")


def hwnas(*args, timeout=1800):
    return subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_install_then_search_then_stop_and_uninstall(ssh_world, tmp_path):
    remote_dir = tmp_path / "device-home" / "hwnas-agent"
    profile = ssh_world.profile("jetson-sim", agent_port=free_port(), remote_dir=str(remote_dir))

    before = hwnas("agent", "status", profile)
    assert before.returncode == 1 and "manager none" in before.stdout

    installed = hwnas("agent", "install", profile)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "installing hwnas-agent" in installed.stdout
    assert "manager supervisor, running, agent 0.1.0" in installed.stdout  # no systemd here
    venv_python = remote_dir / "venv" / "bin" / "python"
    assert venv_python.exists()
    no_torch = subprocess.run([str(venv_python), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0  # the device gets the agent's dependencies only

    again = hwnas("agent", "install", profile)  # idempotent
    assert again.returncode == 0 and "already installed" in again.stdout

    space = tmp_path / "space.yaml"
    space.write_text(DIGITS_SPACE + "search: {n_trials: 2, sampler: random}\n")
    searched = hwnas("search", space, "--device", profile, "--run-dir", tmp_path / "run",
                     "--no-progress")
    assert searched.returncode == 0, searched.stderr[-2000:]
    study = RunFolder.load(tmp_path / "run").open_study()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["device"] == "jetson-sim" for t in trials)
    assert all(t.user_attrs["measurement"]["device"] == "jetson-sim" for t in trials)

    logs = hwnas("agent", "logs", profile)
    assert logs.returncode == 0
    stopped = hwnas("agent", "stop", profile)
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert hwnas("agent", "uninstall", profile).returncode == 0
    assert not remote_dir.exists()


def test_install_refuses_a_local_profile():
    from tests.conftest import REPO

    done = hwnas("agent", "install", REPO / "device_profiles" / "local.yaml")
    assert done.returncode == 2 and "needs no install" in done.stderr
