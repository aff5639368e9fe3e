"""What an SQLite study file's errors mean: a damaged file is named and left alone, a full one
is not a lost connection (neither is waited out)."""

from __future__ import annotations

from hwnas.errors import StorageDamaged

# SQLite's primary result codes of a file that no waiting heals
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 10, 11, 13, 14, 26


def sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code behind a storage error (optuna's StorageInternalError
    and SQLAlchemy's errors wrap it), or None."""
    import sqlite3

    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)  # Python >= 3.11
            if code is not None:
                return code & 0xFF
            text = str(seen)
            return (SQLITE_CORRUPT if "malformed" in text else SQLITE_NOTADB
                    if "not a database" in text else SQLITE_FULL if "is full" in text else None)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


NOT_TRANSIENT = (SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB)


def refuse_damaged(exc: BaseException, url: str, reading: bool = True) -> None:
    """A damaged SQLite study file as one clear error naming it (nothing is done to it)."""
    code = sqlite_code(exc)
    if code not in (SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_CANTOPEN, SQLITE_IOERR):
        return
    from sqlalchemy.engine import make_url

    path = make_url(url).database or url
    cause: BaseException | None = exc
    while getattr(cause, "orig", None) or (cause is not None and cause.__cause__):
        cause = getattr(cause, "orig", None) or cause.__cause__  # type: ignore[union-attr]
    if code in (SQLITE_CANTOPEN, SQLITE_IOERR):  # a local file: no waiting makes it openable
        raise StorageDamaged(
            f"the study database {path} cannot be opened as a file (sqlite: {cause}): it is "
            f"missing, not a plain file, or its run folder moved (run.json names it by the path "
            f"the search made it at); put it back there, or restore it from a backup") from exc
    what = ("cannot be read: no hwnas command (search, report, status) can use it" if reading
            else "cannot be written: `hwnas search` cannot continue it (`hwnas report` may "
                 "still read what it holds)")
    raise StorageDamaged(
        f"the study database {path} is damaged (sqlite: {cause}) and {what}. It is left as it "
        f"is: restore it from a backup, or search afresh with another --run-dir (the run "
        f"folder's artifacts/ keeps the trials' model files)") from exc
