"""One writer per run folder: `hwnas search`, `worker` and `finalize` hold an exclusive flock
on <run folder>/writer.lock while they run. The kernel drops it when its holder dies, however
it dies (a killed controller leaves nothing stuck); the file says who holds it, so a second
writer is refused with its holder named. Readers (`report`, `status`, `export`) take no lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

from hwnas.errors import HwnasError

LOCK_FILE = "writer.lock"
log = logging.getLogger(__name__)


class RunFolderBusy(HwnasError):
    """Another process writes this run folder."""


# folders this process holds, with how many times: a worker locks its folder, then the search
# it runs locks it again
_held: dict[Path, list[int]] = {}
_guard = threading.Lock()


def _key(folder: Path) -> Path:
    return Path(folder).resolve()


def holder(folder: Path) -> dict | None:
    """Who holds (or last held) the folder's lock, as written in its lock file."""
    for _ in range(20):  # the holder writes it right after taking the lock
        try:
            text = (Path(folder) / LOCK_FILE).read_text()
        except OSError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            time.sleep(0.05)
    return None


def describe(info: dict | None) -> str:
    if not info:
        return "another hwnas process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started_unix_time", 0)))
    return (f"`{info.get('command', 'hwnas')}` (pid {info.get('pid')} on {info.get('host')}, "
            f"since {started})")


@contextlib.contextmanager
def writer_lock(folder: Path, command: str, advice: str | None = None) -> Iterator[None]:
    """Hold the folder's writer lock while the block runs (re-entrant within a process), or
    raise RunFolderBusy naming its holder; ``advice``: what else the refused user can do."""
    key = _key(folder)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            acquired = None
        else:
            acquired = _acquire(Path(folder), command, advice)
            if acquired is not None:
                _held[key] = [acquired, 1]
    try:
        yield
    finally:
        with _guard:
            entry = _held.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[key]
                    os.close(entry[0])  # closing the descriptor releases the lock


def _acquire(folder: Path, command: str, advice: str | None) -> int | None:
    """The locked descriptor, or None on a filesystem without locks (said in the log)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:  # never through a link, never a FIFO or device: the holder's record is written in it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                     0o644)
    except OSError as exc:
        raise RunFolderBusy(f"{path}: the run folder's lock file cannot be opened "
                            f"({exc.strerror}{'; it is a symbolic link' if path.is_symlink() else ''})"
                            f": remove it (no hwnas command leaves it other than a plain file)") \
            from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderBusy(f"{path}: the run folder's lock file is not a plain file: remove it "
                            f"(no hwnas command leaves it other than a plain file)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusy(
            f"run folder {folder} is in use by {describe(holder(folder))}: one writer at a time. "
            f"Wait for it to end (or stop it){f', or {advice}' if advice else ''}; `hwnas "
            f"report` and `hwnas status` read the folder meanwhile") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning("%s: this filesystem has no file locks (%s); two writers of this run "
                    "folder would not be stopped", folder, exc.strerror)
        return None
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "started_unix_time": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd
