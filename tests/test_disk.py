"""A full disk, on a real (small tmpfs) filesystem: one line naming where, exit 2, nothing
that was finished lost, and the same command continues once there is space again."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from hwnas.run import RunFolder
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE
from tests.search.test_search_e2e import HWNAS
from tests.test_study_file import run_folder  # noqa: F401  (a fixture: a run folder, no search)


@pytest.fixture()
def small_disk(tmp_path: Path):
    """``small_disk(size)``: a tmpfs of that size mounted under tmp_path."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a real full filesystem needs `mount -t tmpfs` (root): "
                        f"{done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_a_report_onto_a_full_disk_is_one_line(run_folder, small_disk):  # noqa: F811
    _, _, run_dir = run_folder
    disk = small_disk("1m")
    fill(disk)
    line = one_line(subprocess.run([HWNAS, "report", str(run_dir), "--out", str(disk / "r")],
                                   capture_output=True, text=True, timeout=300))
    assert line.startswith(f"hwnas: error: no space left on {disk}"), line
    assert "No space left on device" in line and "--out" in line


def fill(folder: Path) -> Path:
    """Write one file until the filesystem is full; returns it."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    return filler


def completed(run_dir: Path) -> list[int]:
    try:
        study = RunFolder.load(run_dir).open_study()
    except Exception:  # not created yet
        return []
    return [t.number for t in study.get_trials(deepcopy=False,
                                               states=(optuna.trial.TrialState.COMPLETE,))]


def test_a_disk_that_fills_during_a_search_stops_it_in_one_line_and_loses_nothing(
        tmp_path, small_disk):
    space, device = tmp_path / "s.yaml", tmp_path / "d.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE) + ENQUEUED)
    device.write_text(FAST_DEVICE)
    run_dir = small_disk("64m") / "run"
    command = [HWNAS, "search", str(space), "--device", str(device), "--run-dir", str(run_dir),
               "--no-progress", "--trials", "4"]
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(search.communicate()))
    reader.start()
    deadline = time.monotonic() + 900
    while not completed(run_dir) and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
    finished = completed(run_dir)
    assert finished, "no trial finished before the disk was filled"
    filler = fill(run_dir.parent)  # another program takes the rest of the disk
    reader.join(timeout=300)
    if reader.is_alive():  # it used to wait out a "lost database" (SQLite's full file) for hours
        search.kill()
        reader.join()
        pytest.fail(f"the search did not end within 300 s of the disk filling up: "
                    f"{output[1][-2000:] if output else ''}")
    stdout, stderr = output
    line = one_line(subprocess.CompletedProcess(command, search.returncode, stdout, stderr))
    assert line.startswith(f"hwnas: error: no space left on {run_dir}"), line
    assert "run the same command again" in line
    filler.unlink()
    assert set(finished) <= set(completed(run_dir))  # nothing finished was lost
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    study = RunFolder.load(run_dir).open_study()
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 4
    assert optuna.trial.TrialState.RUNNING not in states
