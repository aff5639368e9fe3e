"""A full disk (or a quota), whichever layer hits it: Python's own writes (ENOSPC, EDQUOT),
SQLite's 'database or disk is full', numpy's short write inside an exporter ("9216 requested
and 0 written", no errno). Found in an error's chain, it becomes one line naming where."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.study_file import SQLITE_FULL, sqlite_code

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")  # numpy's tofile()


class NoSpaceLeft(HwnasError):
    """A disk hwnas writes to is full: nothing finished is lost, a re-run continues."""


def no_space(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (causes, contexts, SQLAlchemy's ``orig``) that says a
    disk is full, or None."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(found, OSError) and (found.errno in NO_SPACE or (
                found.errno is None and _SHORT_WRITE.match(str(found)))):
            return found
        if sqlite_code(found) == SQLITE_FULL:
            return found
        todo += [found.__cause__, found.__context__, getattr(found, "orig", None)]
    return None


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return 1 << 62


def no_space_left(exc: BaseException, folders: dict[Path, str | None]
                  ) -> NoSpaceLeft | None:
    """``exc`` as one clear error if a disk is full, else None. Where: the file the error
    names, else the fullest of the folders the command writes (``folders``: each with the
    option that moves it; hwnas's cache and the temporary folder are added)."""
    found = no_space(exc)
    if found is None:
        return None
    moves = {Path(p).absolute(): how for p, how in folders.items()}
    moves.setdefault(cache_folder().absolute(), "HWNAS_CACHE_DIR")
    moves.setdefault(Path(tempfile.gettempdir()).absolute(), "TMPDIR")
    named = getattr(found, "filename", None)
    where = Path(named).absolute() if named else min(moves, key=_free)
    how = next((how for folder, how in moves.items() if where.is_relative_to(folder)), None)
    mount = _mount(where)
    reason = (found.strerror if isinstance(found, OSError) and found.strerror else
              "database or disk is full" if sqlite_code(found) == SQLITE_FULL else
              f"a write stopped short ({found})")
    return NoSpaceLeft(
        f"no space left on {where}: {reason} ({_free(where) / 1e6:.1f} MB free on {mount}); "
        f"free some space there (df -h {mount}){f' or point {how} elsewhere' if how else ''}, "
        f"then run the same command again: what was finished is kept")


def cache_folder() -> Path:
    """hwnas's cache (trained base models, data sets); light to import (no torch)."""
    return Path(os.environ.get("HWNAS_CACHE_DIR", Path.home() / ".cache" / "hwnas"))
