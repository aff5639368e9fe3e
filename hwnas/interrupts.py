"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Where that
is a garbage-collector callback or a ``__del__`` (SQLAlchemy's weakref callbacks run often in
a search), Python prints "Exception ignored in ..." and drops it: the search went on and
exited 0 (CI, 2026-12-07). While ``held()`` is on, a SIGINT is also remembered, and the next
``check()`` (each fine-tuning step, each trial's start and end) raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_pending = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    _pending.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def held() -> Iterator[None]:
    """SIGINT remembered until the block ends. A SIGINT that was ignored (``cmd &`` starts a
    background job so) stays ignored; off the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending.clear()


def check() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that came while ``held()`` is on (again, if
    it was raised where Python dropped it)."""
    if _pending.is_set():
        raise KeyboardInterrupt
