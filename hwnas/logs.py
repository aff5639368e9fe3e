"""Where log lines go. Nothing here runs at import: the CLI calls quiet_terminal() once, and a
search keeps its libraries' lines in the run folder's log while it runs (run_log)."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator

from hwnas.redaction import redact

# what a run's log keeps at INFO: the search's own story (trials finished, storage retries)
VERBOSE_LOGGERS = ("hwnas", "optuna")
# loggers whose lines belong in the run's log, not on the user's terminal
LIBRARY_LOGGERS = ("hwnas", "optuna", "torch", "torch_pruning", "onnxruntime", "onnx",
                   "onnxscript", "paramiko", "py.warnings")


def quiet_terminal() -> None:
    """The `hwnas` command's terminal: progress and results, not the libraries' chatter."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats, stale-trial recovery and metric names are "experimental" in Optuna 5 but
    # are exactly the documented mechanisms hwnas relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    pool = logging.getLogger("sqlalchemy.pool")
    if not any(isinstance(h, _PoolLines) for h in pool.handlers):
        pool.addHandler(_PoolLines(sys.stderr))
        pool.propagate = False  # its lines reach the terminal through _PoolLines alone


class _PoolLines(logging.StreamHandler):
    """SQLAlchemy's pool lines, on stderr as logging's last resort writes them, less one kind:
    where a signal's exception (Ctrl-C's KeyboardInterrupt, SIGTERM's in `hwnas export`) lands
    while the pool returns a connection, SQLAlchemy logs its traceback ("Exception during
    reset or similar") and raises it on, and the command then says in one line that it was
    interrupted (CI, 2026-12-07: a traceback above an export's one line)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.setLevel(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        if kind is not None and not issubclass(kind, Exception):
            return False  # a BaseException: raised on, and said by the command
        return super().filter(record)


class _RunLogFile(logging.FileHandler):
    """The run's log file. A line it cannot write (a full disk) is lost quietly: logging's own
    '--- Logging error ---' tracebacks would bury the command's one clear error."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


class RedactingFormatter(logging.Formatter):
    """A log line as the run folder keeps it: no URL's credential (message, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[logging.Handler]:
    """Append library log lines and Python warnings to ``path`` while the block runs; the
    terminal gets none of them. Restores the logging state afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogFile(path, encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        # their own terminal handlers (optuna's, torch's) step aside while the run lasts
        saved.append((logger, logger.level, logger.propagate, list(logger.handlers)))
        for own in list(logger.handlers):
            logger.removeHandler(own)
        logger.addHandler(handler)
        logger.propagate = False
        if name in VERBOSE_LOGGERS:  # the others keep their level (children may print)
            logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, into the log
            yield handler
    finally:
        logging.captureWarnings(False)
        for logger, level, propagate, handlers in saved:
            logger.removeHandler(handler)
            for own in handlers:
                logger.addHandler(own)
            logger.setLevel(level)
            logger.propagate = propagate
        with contextlib.suppress(OSError):  # a full disk: the lines are lost, not the error
            handler.close()
