"""A damaged study.db: every command that opens it says which file and what to do, in one
line, exits 2, and leaves the file as it was."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from hwnas.config import load_device_profile, load_search_space
from hwnas.records import TrialOutcome, TrialStage
from hwnas.run import RunFolder
from hwnas.storage import make_storage
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

HWNAS = str(Path(sys.executable).parent / "hwnas")


@pytest.fixture()
def run_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run folder as `hwnas search` leaves it: its configs recorded and a real SQLite study
    with finished trials (made here, without the minutes of a search)."""
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE) + ENQUEUED)
    device.write_text(FAST_DEVICE)
    run = RunFolder.locate(load_search_space(space), load_device_profile(device),
                           tmp_path / "run")
    run.path.mkdir()
    run.record_configs(space, [device])
    study = optuna.create_study(storage=make_storage(run.storage_url), study_name=run.study_name,
                                directions=["maximize", "minimize", "minimize"])
    for number in range(40):  # hwnas's own trial records (failed ones: the fewest fields)
        failed = TrialOutcome(TrialStage.FAILED, failure=f"trial {number}: " + "x" * 2000)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, params={"x": number},
            distributions={"x": optuna.distributions.IntDistribution(0, 100)},
            user_attrs=failed.attributes()))
    del study
    return space, device, run.path


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":  # a copy or a disk that stopped half-way
        path.write_bytes(data[:len(data) // 2])
    elif how == "garbage":  # overwritten by something else entirely
        path.write_bytes(bytes(range(256)) * (len(data) // 256))
    else:  # pages in the middle overwritten: the header and schema still read
        page = 4096
        path.write_bytes(data[:2 * page] + b"\xff" * (len(data) - 3 * page) + data[-page:])


@pytest.mark.parametrize("how", ["truncated", "garbage", "pages"])
def test_a_damaged_study_db_is_one_line_naming_the_file(run_folder, how):
    space, device, run_dir = run_folder
    database = run_dir / "study.db"
    damage(database, how)
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    commands = {"search": ["search", str(space), "--device", str(device), "--run-dir",
                           str(run_dir), "--no-progress", "--trials", "41"],
                "report": ["report", str(run_dir)], "status": ["status", str(run_dir)]}
    for verb, args in commands.items():
        done = subprocess.run([HWNAS, *args], capture_output=True, text=True, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, f"{verb}: {done.stderr[-3000:]}"
        assert f"the study database {database.resolve()} is damaged" in lines[0], lines[0]
        assert "restore it from a backup" in lines[0] and "--run-dir" in lines[0]
        assert "pre-flight" not in done.stdout  # refused before any model work
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before  # left as it was


def test_the_same_folder_undamaged_reads(run_folder):
    """The fixture's study is a real one: what the damaged copies are compared with."""
    _, _, run_dir = run_folder
    done = subprocess.run([HWNAS, "status", str(run_dir)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "40" in done.stdout, done.stderr[-2000:]


def test_a_moved_run_folder_reads_its_own_study_at_once(run_folder, tmp_path):
    """run.json names study.db by its old path: a moved folder was waited out as a lost
    database for 600 s (a trial attack), then refused in one line; it now reads its own."""
    import shutil
    import time

    _, _, run_dir = run_folder
    moved = Path(shutil.move(str(run_dir), str(tmp_path / "elsewhere")))
    for verb in ("report", "status"):
        started = time.monotonic()
        done = subprocess.run([HWNAS, verb, str(moved)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{verb}: {done.stderr[-3000:]}"
        assert str(run_dir) not in done.stdout and time.monotonic() - started < 120
    assert (moved / "report" / "report.html").is_file() and not run_dir.exists()


@pytest.mark.parametrize("how", ["directory", "dev-null"])
def test_a_study_db_that_cannot_be_opened_is_one_line_not_a_wait(run_folder, tmp_path, how):
    """A trial attack: a study.db that is a folder or a link to /dev/null was waited out as a
    lost database for 600 s."""
    import os
    import time

    _, _, run_dir = run_folder
    database = run_dir / "study.db"
    database.unlink()
    database.mkdir() if how == "directory" else os.symlink("/dev/null", database)
    for verb in ("report", "status"):
        started = time.monotonic()
        done = subprocess.run([HWNAS, verb, str(run_dir)], capture_output=True, text=True,
                              timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, f"{verb}: {done.stderr[-3000:]}"
        assert "cannot be opened as a file" in lines[0] and "study.db" in lines[0], lines[0]
        assert time.monotonic() - started < 120  # never the 600 s outage wait


def test_a_copied_run_folder_reads_and_writes_its_own_study(run_folder, tmp_path):
    """run.json names study.db by absolute path; a copy of the folder (to another path, or
    machine) must not go on writing the original's database."""
    import shutil

    _, _, run_dir = run_folder
    original = hashlib.sha256((run_dir / "study.db").read_bytes()).hexdigest()
    copy = tmp_path / "copied"
    shutil.copytree(run_dir, copy)
    loaded = RunFolder.load(copy)
    assert loaded.storage_url == f"sqlite:///{(copy / 'study.db').resolve()}"
    study = loaded.open_study()
    study.set_user_attr("written_in_the_copy", True)
    assert hashlib.sha256((run_dir / "study.db").read_bytes()).hexdigest() == original
    assert RunFolder.load(copy).open_study().user_attrs["written_in_the_copy"] is True
    assert "written_in_the_copy" not in RunFolder.load(run_dir).open_study().user_attrs
    # moved away: the original's path is gone, the copy still opens its own
    shutil.rmtree(run_dir)
    assert len(RunFolder.load(copy).open_study().trials) == 40
