"""`hwnas agent install` over a real sshd, then a search on the installed agent."""

from __future__ import annotations

import json
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


# a remote folder that runs three commands if any shell ever sees it unquoted
HOSTILE = "hw agent's \"dir\";touch PWNED1;$(touch PWNED2)`touch PWNED3`&x|y<z>w"
MARKERS = ("PWNED1", "PWNED2", "PWNED3", "PWNED4")


def files_under(folder: Path, skip: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if skip not in p.parents and p != skip}


def test_install_then_search_then_stop_and_uninstall(ssh_world, tmp_path):
    """With a remote folder built to inject commands: nothing runs, nothing lands outside it."""
    remote_dir = tmp_path / "device-home" / HOSTILE
    profile = ssh_world.profile("jetson-sim", agent_port=free_port(), remote_dir=str(remote_dir))
    outside_before = files_under(tmp_path, remote_dir)

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
    for name in ("agent.json", "token"):  # the agent's own files: private
        assert (remote_dir / name).stat().st_mode & 0o777 == 0o600
    assert remote_dir.stat().st_mode & 0o777 == 0o700

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
    assert logs.returncode == 0 and "listening" in logs.stdout

    # the profile's power source goes to the device's agent.json, as data: a command line
    # that would run a fourth command if a shell saw it
    profile.write_text(profile.read_text() + "power: {source: command, options: "
                       "{command: 'my-meter --watts; touch PWNED4'}}\n")
    reconfigured = hwnas("agent", "install", profile)
    assert reconfigured.returncode == 0, reconfigured.stderr
    assert "its configuration (agent.json) changed: restarting it" in reconfigured.stdout
    config = json.loads((remote_dir / "agent.json").read_text())
    assert config["power_sources"] == {"command": {"kind": "command", "options": {
        "command": "my-meter --watts; touch PWNED4"}}}
    from hwnas.config import load_device_profile
    from hwnas.remote.device import open_device

    with open_device(load_device_profile(profile)) as client:  # the agent serves the new config
        assert client.hello()["power_sources"] == config["power_sources"]

    # outside the remote folder: only its parent folder (mkdir -p) and what the search wrote
    new_outside = files_under(tmp_path, remote_dir) - outside_before
    expected = {remote_dir.parent, tmp_path / "space.yaml", tmp_path / "run"}
    assert {p for p in new_outside if p not in expected and tmp_path / "run" not in p.parents} == set()
    for marker in MARKERS:
        assert not list(tmp_path.rglob(marker)) and not (Path.home() / marker).exists()
    assert not (Path.home() / ".config/systemd/user/hwnas-agent.service").exists()
    stopped = hwnas("agent", "stop", profile)
    assert stopped.returncode == 0 and "hwnas-agent stopped;" in stopped.stdout
    assert hwnas("agent", "uninstall", profile).returncode == 0
    assert not remote_dir.exists()


def test_install_refuses_a_local_profile():
    from tests.conftest import REPO

    done = hwnas("agent", "install", REPO / "device_profiles" / "local.yaml")
    assert done.returncode == 2 and "needs no install" in done.stderr


def test_profile_fields_with_control_characters_are_refused_at_load(tmp_path):
    import pytest

    from hwnas.config import load_device_profile
    from hwnas.errors import ConfigError

    path = tmp_path / "bad.yaml"
    for key, value in (("remote_dir", "agent\ntouch PWNED"), ("host", "dev\r"),
                       ("user", "pi\x1b[2J"), ("jump_host", "a,b\n"),
                       ("identity_file", "k\x00ey")):
        path.write_text(f"name: bad\nconnection: {{kind: ssh, host: dev, {key}: {json.dumps(value)}}}\n")
        with pytest.raises(ConfigError, match=rf"connection.{key}.*control character"):
            load_device_profile(path)
    for value in ("..", "a/../..", "/", "~", "-rf"):
        path.write_text(f"name: bad\nconnection: {{kind: ssh, host: dev, remote_dir: '{value}'}}\n")
        with pytest.raises(ConfigError, match="a folder of its own"):
            load_device_profile(path)
    path.write_text("name: bad\nconnection: {kind: ssh, host: dev, remote_dir: \"a\\nb\"}\n")
    done = hwnas("agent", "uninstall", path, timeout=120)  # the command line: one line, exit 2
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "key 'connection.remote_dir'" in done.stderr and "control character" in done.stderr


def test_the_ssh_copy_id_advice_is_shell_quoted(ssh_world):
    import re
    import shlex

    import pytest

    from hwnas.config import load_device_profile
    from hwnas.remote.ssh import KeyRefused, SSHSession
    from hwnas.testing.sshd import keygen

    path = ssh_world.profile(identity=keygen(ssh_world.folder / "k e;y"))
    path.write_text(path.read_text().replace(f"user: {ssh_world.server.user}", "user: \"o'neil $(id)\""))
    with pytest.raises(KeyRefused) as caught:
        SSHSession("d", load_device_profile(path).connection).client()
    advice = re.search(r"\((ssh-copy-id .*)\) or set identity_file", str(caught.value)).group(1)
    assert shlex.split(advice) == ["ssh-copy-id", "-i", str(ssh_world.folder / "k e;y.pub"), "-p",
                                   str(ssh_world.server.port), "o'neil $(id)@127.0.0.1"]
