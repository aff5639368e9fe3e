"""Putting an export in place whole: its files are written into a temporary folder beside
the target, then moved in together (renames), the card last, with Ctrl-C and SIGTERM held back
meanwhile; a temporary folder an export killed outright left behind is removed next time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staging_folder(out_dir: Path, stem: str) -> Iterator[Path]:
    """A temporary folder for an export of ``stem``, beside ``out_dir``'s files (the same
    filesystem: moving them in is a rename), gone when the block ends however it ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir, stem)
    staging = out_dir / f".{stem}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def put_in_place(paths: dict[str, Path], out_dir: Path,
                 whole: threading.Event | None = None) -> dict[str, Path]:
    """Move the staged files (or folders) into ``out_dir`` together, in order, the card last:
    its presence means the set is whole. A folder replaces an earlier export of it."""
    with _signals_deferred():
        for path in paths.values():
            target = out_dir / path.name
            if path.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        if whole is not None:
            whole.set()
    return {kind: out_dir / path.name for kind, path in paths.items()}


def _remove_abandoned(out_dir: Path, stem: str) -> None:
    """Temporary folders of exports of this trial whose process is gone (killed outright)."""
    for folder in out_dir.glob(f".{stem}.export-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """The few renames that put an export in place run whole: Ctrl-C or SIGTERM meanwhile is
    acted on after them (and finds the export complete)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
