"""`hwnas agent install` into a device with no package index, over a real sshd: the wheels come
from the controller; a re-install ships nothing; a platform without wheels changes nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hwnas.config import load_device_profile
from hwnas.disk import cache_folder
from hwnas.remote.install import RemoteAgent
from hwnas.remote.wheels import IndexUnreachable, WheelMissing
from hwnas.testing.sshd import free_port

# every session on the device sees an index that does not answer: only --no-index can work
NO_INDEX = "SetEnv PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_EXTRA_INDEX_URL=http://127.0.0.1:9/x\n"


def offline_device(ssh_world):
    server = ssh_world.server
    server.config.write_text(server.config.read_text() + NO_INDEX)
    server.stop()
    server.start()


def install(path: Path) -> tuple[RemoteAgent, list[str], object]:
    remote, logged = RemoteAgent(load_device_profile(path)), []
    try:
        status = remote.install(cache_folder(), logged.append)
    except IndexUnreachable as exc:
        pytest.skip(f"the package index is unreachable from this machine: {exc}")
    finally:
        remote.close()
    return remote, logged, status


def test_offline_install_answers_then_reinstall_ships_nothing(ssh_world, tmp_path):
    offline_device(ssh_world)
    remote_dir = tmp_path / "device-home" / "agent"
    profile = ssh_world.profile("offline-pi", agent_port=free_port(), remote_dir=str(remote_dir))

    first, logged, status = install(profile)
    assert status.agent_version == "0.1.0", status
    assert "from wheels shipped from the controller" in "\n".join(logged)
    shipped = {name.split("-")[0] for name in first.shipped.files}
    assert {"hwnas_agent", "numpy", "onnxruntime", "pip"} <= shipped
    assert first.shipped.bytes > 1_000_000
    remote = RemoteAgent(load_device_profile(profile))
    try:
        assert remote.client().hello()["agent_version"] == "0.1.0"
    finally:
        remote.close()
    # the device's pip looked only at the shipped folder, never at an index
    pip_log = (remote_dir / "pip-install.log").read_text()
    assert "Looking in links: ../wheels\n" in pip_log and "/opt/wheels" not in pip_log
    assert "Looking in indexes" not in pip_log and "127.0.0.1:9" not in pip_log
    assert "Ignoring indexes: https://pypi.org/simple" in pip_log  # what --no-index says
    assert [line for line in pip_log.splitlines()
            if "http" in line and "Ignoring indexes" not in line] == []
    assert "Starting new HTTP" not in pip_log and "Getting page" not in pip_log
    venv_numpy = subprocess.run([str(remote_dir / "venv/bin/python"), "-c",
                                 "import numpy; print(numpy.__file__)"],
                                capture_output=True, text=True, check=True).stdout
    assert str(remote_dir / "venv") in venv_numpy

    again, logged, status = install(profile)  # nothing changed: nothing shipped, no pip run
    assert again.shipped.files == () and again.shipped.bytes == 0
    assert "already installed" in "\n".join(logged) and status.agent_version == "0.1.0"

    # an upgrade ships only what the device lacks, and removes what the new set does not hold
    wheels = remote_dir / "wheels"
    numpy_wheel = next(wheels.glob("numpy-*.whl"))
    numpy_wheel.unlink()
    (wheels / "oldpkg-0.1-py3-none-any.whl").write_bytes(b"an older set's wheel")
    (remote_dir / "installed.sha256").unlink()
    upgraded, logged, status = install(profile)
    assert upgraded.shipped.files == (numpy_wheel.name,) and status.agent_version == "0.1.0"
    assert upgraded.shipped.removed == ("oldpkg-0.1-py3-none-any.whl",)
    assert not (wheels / "oldpkg-0.1-py3-none-any.whl").exists()

    # a Jetson's venv sees the system's site packages (JetPack's tensorrt); switching it on
    # remakes the venv from the wheels already there: nothing shipped, the agent answers
    profile.write_text(profile.read_text() + "agent_install: {system_site_packages: true}\n")
    switched, logged, status = install(profile)
    assert switched.shipped.bytes == 0 and status.agent_version == "0.1.0"
    assert "include-system-site-packages = true" in (remote_dir / "venv/pyvenv.cfg").read_text()
    # a system package (as JetPack's tensorrt is one) now imports in the venv...
    home = (remote_dir / "venv/pyvenv.cfg").read_text().split("home = ")[1].split("\n")[0]
    base = subprocess.run([f"{home}/python3", "-c", "import yaml; print(yaml.__file__)"],
                          capture_output=True, text=True)
    if base.returncode == 0:  # Debian's python3-yaml, where the device's Python has it
        seen = subprocess.run([str(remote_dir / "venv/bin/python"), "-c",
                               "import yaml; print(yaml.__file__)"],
                              capture_output=True, text=True, check=True).stdout
        assert seen == base.stdout and str(remote_dir) not in seen
    # ...and the agent's own numpy still comes from the venv, before any system one
    venv_numpy = subprocess.run([str(remote_dir / "venv/bin/python"), "-c",
                                 "import numpy; print(numpy.__file__)"],
                                capture_output=True, text=True, check=True).stdout
    assert str(remote_dir / "venv") in venv_numpy
    remote = RemoteAgent(load_device_profile(profile))
    try:  # the agent's facts: each runtime that imports, its version, and where from
        runtimes = remote.client().facts()["runtimes"]
        assert runtimes["onnxruntime"]["location"].startswith(str(remote_dir / "venv"))
        assert runtimes["onnxruntime"]["version"] and "CPUExecutionProvider" in \
            runtimes["onnxruntime"]["execution_providers"]
    finally:
        remote.close()
    assert any("measures with onnxruntime" in line and "CPUExecutionProvider" in line
               for line in logged)
    # a profile asking for a runtime the device lacks: refused by `devices check`, by package
    from hwnas.remote.check import check_device

    text = profile.read_text()
    profile.write_text(text + "runtime: {execution_providers: [CUDAExecutionProvider]}\n")
    checked = check_device(load_device_profile(profile))
    assert not checked["ok"] and "onnxruntime-gpu" in checked["error"], checked
    profile.write_text(text)
    remote = RemoteAgent(load_device_profile(profile))
    try:
        remote.stop()
    finally:
        remote.close()


def test_a_platform_without_wheels_fails_before_the_device_changes(ssh_world, tmp_path):
    """A device whose Python runs as 32-bit x86 (a real i686 personality, setarch): neither
    numpy nor onnxruntime publishes wheels for it today."""
    setarch = shutil.which("setarch")
    if setarch is None or subprocess.run([setarch, "i686", "true"]).returncode != 0:
        pytest.skip("setarch i686 is not available or not permitted on this machine")
    python32 = tmp_path / "python3-i686"
    python32.write_text(f'#!/bin/sh\nexec {setarch} i686 {shutil.which("python3")} "$@"\n')
    python32.chmod(0o755)
    offline_device(ssh_world)
    remote_dir = tmp_path / "device-home" / "agent"
    profile = ssh_world.profile("old-board", agent_port=free_port(), remote_dir=str(remote_dir))
    profile.write_text(profile.read_text() + f"agent_install: {{python: '{python32}'}}\n")
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(WheelMissing) as caught:
        install(profile)
    message = str(caught.value)
    assert any(f"{package} publishes no wheel for i686, CPython" in message
               for package in ("numpy", "onnxruntime")), message
    assert "agent_install: {index: device}" in message and "Nothing was changed" in message
    assert not (tmp_path / "device-home").exists()  # not even the folder was made
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def python38() -> str | None:
    """A real CPython 3.8 (JetPack 5's version): on PATH, or the base of scripts/setup.sh's
    .venv-py38."""
    from tests.conftest import REPO

    candidates = [shutil.which("python3.8")]
    cfg = REPO / ".venv-py38" / "pyvenv.cfg"
    if cfg.exists():
        home = dict(line.split(" = ", 1) for line in cfg.read_text().splitlines() if " = " in line)
        candidates.insert(0, str(Path(home.get("home", "")) / "python3.8"))
    for candidate in filter(None, candidates):  # a pyenv shim outside its shell is no Python
        done = subprocess.run([candidate, "-c", "import sys; print(sys.executable)"],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def test_a_python38_device_gets_a_cp38_wheel_set_offline(ssh_world, tmp_path):
    """JetPack 5's Python 3.8, offline: the cp38 wheels pip picks are shipped and the agent
    runs on them (on this machine's x86-64; the aarch64 set is resolved in test_wheels.py)."""
    interpreter = python38()
    if interpreter is None:
        pytest.skip("no CPython 3.8 here (scripts/setup.sh makes .venv-py38 from one)")
    offline_device(ssh_world)
    remote_dir = tmp_path / "device-home" / "agent"
    profile = ssh_world.profile("jetpack5-like", agent_port=free_port(), remote_dir=str(remote_dir))
    profile.write_text(profile.read_text() + f"agent_install: {{python: '{interpreter}'}}\n")

    installed, logged, status = install(profile)
    assert status.agent_version == "0.1.0" and "CPython 3.8" in "\n".join(logged)
    compiled = [n for n in installed.shipped.files if n.startswith(("numpy-", "onnxruntime-"))]
    assert len(compiled) == 2 and all("-cp38-cp38-" in n for n in compiled), compiled
    remote = RemoteAgent(load_device_profile(profile))
    try:
        assert remote.client().hello()["python"].startswith("3.8.")
        remote.stop()
    finally:
        remote.close()
