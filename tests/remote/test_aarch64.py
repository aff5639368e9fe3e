"""An aarch64 board in a box (hwnas.testing.aarch64): Debian bookworm arm64 under qemu-user
through binfmt_misc, reached by the tests' real sshd (ChrootDirectory), offline. End to end
with the real CLI: `hwnas agent install` ships the aarch64 cp311 wheels from the controller,
`hwnas devices check` and `hwnas profile` measure with the aarch64 onnxruntime wheel, and
every figure says it is emulated and is refused as a latency.

The root file system is built once (3-6 min) into the user's cache (not the session's
isolated one) and reused; each run starts a fresh overlay on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwnas.config import load_device_profile, load_search_space
from hwnas.errors import MeasurementError
from hwnas.measurement import Measurement
from hwnas.remote.install import RemoteAgent
from hwnas.remote.ssh import SSHSession
from hwnas.testing import aarch64
from hwnas.testing.sshd import free_port, keygen
from tests.conftest import REPO, USER_CACHE

HWNAS = str(Path(sys.executable).parent / "hwnas")
REMOTE_DIR = "/root/.local/share/hwnas-agent"  # the default remote_dir, in root's home
ELF_AARCH64 = 183  # e_machine of an aarch64 ELF file


def hwnas(*args, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    why = aarch64.enable_binfmt()
    if why:
        pytest.skip(f"aarch64 box: {why}")
    root = aarch64.cached_root(USER_CACHE)
    folder = tmp_path_factory.mktemp("aarch64-box")
    with aarch64.AArch64Box(root, folder, keygen(folder / "id_ed25519")) as running:
        yield running


@pytest.fixture(scope="module")
def installed(box):
    """The box's profile after a first `hwnas agent install` (and that install's output)."""
    profile = box.profile("pi5-box", agent_port=free_port())
    done = hwnas("agent", "install", profile)
    assert done.returncode == 0, done.stdout + done.stderr
    return profile, done.stdout


def machine_of(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def test_the_box_runs_aarch64_code_under_qemu(box):
    assert machine_of(box.path("/usr/bin/python3.11")) == ELF_AARCH64
    entry = aarch64.binfmt_entry()
    assert entry["state"] == "enabled" and "F" in entry["flags"]
    profile = load_device_profile(box.profile("probe", agent_port=free_port()))
    session = SSHSession(profile.name, profile.connection)  # the tests' sshd, chrooted
    try:
        code, out, err = session.run("uname -m; cat /proc/sys/kernel/arch; cat /etc/debian_version",
                                     60)
    finally:
        session.close()
    assert code == 0, err
    machine, kernel, debian = out.split()
    assert (machine, kernel) == ("aarch64", "x86_64") and debian.startswith("12.")


def test_offline_install_ships_aarch64_wheels_then_reinstall_ships_nothing(box, installed):
    profile, out = installed
    assert "aarch64, CPython 3.11, glibc 2.36" in out, out
    assert "from wheels shipped from the controller" in out
    assert "measures with onnxruntime" in out and "CPUExecutionProvider" in out
    wheels = sorted(p.name for p in box.path(REMOTE_DIR + "/wheels").glob("*.whl"))
    compiled = [n for n in wheels if n.startswith(("numpy-", "onnxruntime-"))]
    assert len(compiled) == 2 and all("-cp311-cp311-" in n and n.endswith("_aarch64.whl")
                                      for n in compiled), wheels
    # the box's pip looked only at the shipped folder, never at an index
    pip_log = box.path(REMOTE_DIR + "/pip-install.log").read_text()
    assert "Looking in links: ../wheels\n" in pip_log and "Looking in indexes" not in pip_log
    assert [line for line in pip_log.splitlines()
            if "http" in line and "Ignoring indexes" not in line] == []
    # what the venv installed is aarch64 code: onnxruntime's native library
    native = list(box.path(REMOTE_DIR + "/venv/lib/python3.11/site-packages/onnxruntime/capi")
                  .glob("onnxruntime_pybind11_state*.so"))
    assert native and machine_of(native[0]) == ELF_AARCH64, native

    again = hwnas("agent", "install", profile)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already installed" in again.stdout and "shipped" not in again.stdout


def test_facts_and_devices_check_say_the_box_is_emulated(box, installed):
    profile, _ = installed
    remote = RemoteAgent(load_device_profile(profile))
    try:
        facts = remote.client().facts()
    finally:
        remote.close()
    assert facts["machine"] == "aarch64" and facts["python"].startswith("3.11.")
    emulation = facts["emulation"]
    assert emulation["process_machine"] == "aarch64" and emulation["kernel_machine"] == "x86_64"
    assert "qemu-user" in emulation["reason"]
    assert facts["runtimes"]["onnxruntime"]["location"].startswith(REMOTE_DIR + "/venv/")

    done = hwnas("devices", "check", profile, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checked = json.loads(done.stdout)[0]
    assert checked["ok"], checked
    assert "CPUExecutionProvider" in checked["runtimes"]["onnxruntime"]
    assert "aarch64 code emulated on an x86_64 kernel by qemu-user" in checked["emulated"]
    assert checked["precisions"] == {"fp32": "ok (emulated machine)",
                                     "int8": "ok (emulated machine)"}, checked


def test_a_model_profiled_in_the_box_is_emulated_and_never_a_latency(box, installed, models_dir):
    profile, _ = installed
    done = hwnas("profile", models_dir / "medium.onnx", "--device", profile, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads(done.stdout)[0]
    runtime = row["measurement"]["runtime"]
    assert runtime["emulated"] is True and "qemu-user" in runtime["emulation"]
    assert runtime["user_mode_emulation"]["kernel_machine"] == "x86_64"
    assert runtime["execution_providers"] == ["CPUExecutionProvider"]
    measured = Measurement.from_dict(row["measurement"])
    assert measured.emulated and measured.latency_ms_p90 > 0

    # as the QNN HTP simulator's: no latency objective, no latency budget
    space = load_search_space(REPO / "search_spaces" / "fashion_mnist.yaml")
    from hwnas.budgets import effective_budgets
    from hwnas.search.candidates import refuse_emulated_latency

    budgets = effective_budgets(space, load_device_profile(profile))
    with pytest.raises(MeasurementError) as refused:
        refuse_emulated_latency(space, budgets, measured)
    assert "emulated" in str(refused.value) and "qemu-user" in str(refused.value)
    assert "latency_p90_ms" in str(refused.value)


LEFT_BEHIND = """
import sys, time
from pathlib import Path
from hwnas.config import load_device_profile
from hwnas.remote.ssh import SSHSession
from hwnas.testing import aarch64
from hwnas.testing.sshd import free_port, keygen
folder = Path(sys.argv[2])
box = aarch64.AArch64Box(Path(sys.argv[1]), folder, keygen(folder / "k")).start()
profile = load_device_profile(box.profile("left", free_port()))
session = SSHSession(profile.name, profile.connection)
session.run("setsid nohup sleep 600 >/dev/null 2>&1 </dev/null &", 60)
print(box.mountpoint, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan ended is reaped by init, in its own time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_box_left_by_a_killed_run_is_reaped(box, tmp_path):
    """A test run killed (SIGKILL) with a box up leaves its mounts, the processes inside and
    its sshd: the next box's start ends them, undoes the mounts and removes the mount point."""
    child = subprocess.Popen([sys.executable, "-c", LEFT_BEHIND, str(box.root), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        mountpoint = Path(child.stdout.readline().strip())
        assert mountpoint.parent == aarch64.MOUNTS, mountpoint
        deadline = time.monotonic() + 60
        while not aarch64.pids_in(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.2)
        inside = aarch64.pids_in(mountpoint)
        assert inside  # the sleep, run as aarch64 code in the box
        sshd_pid = json.loads(mountpoint.with_name(mountpoint.name + ".json").read_text())["pid"]
    finally:
        child.kill()
        child.wait()
    assert os.path.ismount(mountpoint) and Path(f"/proc/{sshd_pid}").exists()

    assert aarch64.reap_stale_boxes() == [mountpoint]
    assert not mountpoint.exists() and str(mountpoint) not in Path("/proc/self/mounts").read_text()
    assert aarch64.pids_in(mountpoint) == [] and not any(map(running, inside))
    deadline = time.monotonic() + 10  # its orphaned sshd ends on TERM
    while running(sshd_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(sshd_pid)
    assert os.path.ismount(box.mountpoint)  # the running box is untouched
