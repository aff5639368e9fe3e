"""No credential at rest in what hwnas writes: run folders are meant to be shared.

Whatever the controller writes (run.json, run.log, kept configs, reports, model cards, the
study's attributes, status output, messages) passes URLs through ``redact``: the password
of ``scheme://user:password@host`` and credential-like query parameters (``?password=``,
``&sslpassword=``, ``token``, ``secret``, ``key``...) become ``***``. The running process
keeps and uses the real URL.

A run folder therefore names its storage without the password; ``with_credentials`` gives it
back to a later command (report, export, finalize, status, a resumed search) from the
``HWNAS_STORAGE`` environment variable (the full URL), or, for PostgreSQL, leaves the password
to libpq (``PGPASSWORD``, ``~/.pgpass``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hwnas.errors import ConfigError

HIDDEN = "***"
STORAGE_VARIABLE = "HWNAS_STORAGE"

# scheme://user:PASSWORD@ (the password may hold anything but '@' and blanks, as SQLAlchemy
# reads it; a port followed by '@' later in the text is hidden too: better one too many)
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#]*:)([^\s@]+)(?=@)")
_QUERY_SECRET = re.compile(
    r"([?&;][\w.-]*(?:password|passwd|pwd|secret|token|key|signature|credential)[\w.-]*=)"
    r"([^&;#\s'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, a log line, a config file) with every URL credential replaced by ***."""
    return _QUERY_SECRET.sub(rf"\g<1>{HIDDEN}", _PASSWORD.sub(rf"\g<1>{HIDDEN}", text))


def has_hidden_credentials(url: str) -> bool:
    """Whether a URL read from a run folder had a credential taken out by ``redact`` (one an
    older hwnas kept whole is used as it is)."""
    filled = url.replace(HIDDEN, "x")
    return redact(url) == url and redact(filled) != filled


def _without_credentials(url: str) -> str:
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    query = {key: value for key, value in parsed.query.items() if value != HIDDEN}
    return URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port,
                      parsed.database, query).render_as_string(hide_password=False)


def _libpq_has_a_password() -> bool:
    pgpass = os.environ.get("PGPASSFILE") or Path.home() / ".pgpass"
    return bool(os.environ.get("PGPASSWORD")) or Path(pgpass).is_file()


def with_credentials(url: str, where: str) -> str:
    """The URL to connect with, for a storage URL kept redacted in ``where`` (run.json)."""
    if not has_hidden_credentials(url):
        return url
    given = os.environ.get(STORAGE_VARIABLE)
    if given:
        if redact(given) != url:
            raise ConfigError(f"{where}: ${STORAGE_VARIABLE} names another storage "
                              f"({redact(given)}) than this run folder's ({url})")
        return given
    if url.split(":", 1)[0].split("+", 1)[0] == "postgresql" and _libpq_has_a_password():
        return _without_credentials(url)
    raise ConfigError(
        f"{where}: the storage's password is not kept in the run folder ({url}); give it: "
        f"{STORAGE_VARIABLE}=<the full storage URL> in the environment, or --storage URL again "
        f"for `hwnas search` (PostgreSQL also reads PGPASSWORD or ~/.pgpass)")
