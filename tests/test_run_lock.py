"""One writer per run folder: a second writer is refused with its holder named, readers still
read, and a holder that is killed leaves no stuck lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from hwnas.run import RunFolder, completed_search_trials
from hwnas.run_lock import RunFolderBusy, holder, writer_lock
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE
from tests.search.test_search_e2e import HWNAS
from tests.test_study_file import run_folder  # noqa: F401  (a fixture: a run folder, no search)

HOLD = ("import sys, time\n"
        "from hwnas.run_lock import writer_lock\n"
        "with writer_lock(sys.argv[1], 'hwnas search'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock (as a search would)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def wait_for(condition, what: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_held_folder_is_refused_with_its_holder_and_freed_when_the_holder_is_killed(tmp_path):
    other = hold(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by `hwnas search` \(pid {other.pid} on "):
            with writer_lock(tmp_path, "hwnas finalize"):
                pass
    finally:
        other.kill()  # SIGKILL: no clean-up of its own
        other.wait()
    with writer_lock(tmp_path, "hwnas finalize"):  # at once: the kernel dropped the lock
        with writer_lock(tmp_path, "hwnas finalize"):  # re-entrant within a process
            assert holder(tmp_path)["pid"] == os.getpid()
        again = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1 and "RunFolderBusy" in again.stderr  # still held here
    last = hold(tmp_path)  # and released when the block ended
    last.kill()
    last.wait()


def test_finalize_of_a_folder_in_use_is_one_line_and_readers_still_read(run_folder):  # noqa: F811
    _, _, run_dir = run_folder
    other = hold(run_dir)
    try:
        done = subprocess.run([HWNAS, "finalize", str(run_dir)], capture_output=True, text=True,
                              timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
        assert f"run folder {run_dir} is in use by `hwnas search` (pid {other.pid}" in lines[0]
        for reader in (["status", str(run_dir)], ["report", str(run_dir)]):
            read = subprocess.run([HWNAS, *reader], capture_output=True, text=True, timeout=300)
            assert read.returncode == 0, read.stderr[-2000:]
    finally:
        other.kill()
        other.wait()


def test_a_second_search_on_the_same_folder_is_refused_and_a_killed_one_leaves_no_lock(
        tmp_path):
    """Two `hwnas search` on one run folder both ran, and the study got 5 trials where 4
    were asked: the second is now refused, naming the first."""
    space, device, run_dir = tmp_path / "s.yaml", tmp_path / "d.yaml", tmp_path / "run"
    space.write_text(textwrap.dedent(DIGITS_SPACE) + ENQUEUED)
    device.write_text(FAST_DEVICE)
    command = [HWNAS, "search", str(space), "--device", str(device), "--run-dir", str(run_dir),
               "--no-progress", "--trials", "3"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        wait_for(lambda: (holder(run_dir) or {}).get("pid") == first.pid or
                 first.poll() is not None, "the first search to hold its run folder")
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
        assert f"is in use by `hwnas search` (pid {first.pid} on " in lines[0]
        assert "--run-dir" in lines[0] and "hwnas worker" in lines[0]
        assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    study = RunFolder.load(run_dir).open_study()
    assert completed_search_trials(study) == 3  # what was asked, not more

    # a search killed mid-trial (SIGKILL: no clean-up) leaves the folder free at once
    killed = subprocess.Popen([*command[:-1], "4"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any(t.state == optuna.trial.TrialState.RUNNING
                             for t in study.get_trials(deepcopy=False)) or
                 killed.poll() is not None, "the next trial to start")
        assert killed.poll() is None and holder(run_dir)["pid"] == killed.pid
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the controller and its local agent
        killed.wait()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 trials done, 0 to go" in again.stdout


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_and_nothing_is_written_through_it(
        tmp_path, kind):
    """A trial attack: writer.lock as a symbolic link had its target overwritten with the
    holder's record; as a FIFO the command ended in a traceback."""
    folder, victim = tmp_path / "run", tmp_path / "victim.txt"
    folder.mkdir()
    victim.write_text("precious\n")
    lock = folder / "writer.lock"
    {"symlink": lambda: lock.symlink_to(victim), "fifo": lambda: os.mkfifo(lock),
     "directory": lambda: lock.mkdir()}[kind]()
    with pytest.raises(RunFolderBusy, match=r"writer\.lock: the run folder's lock file .*remove it"):
        with writer_lock(folder, "hwnas search"):
            pass
    assert victim.read_text() == "precious\n"
