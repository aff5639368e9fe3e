"""One progress bar for the `hwnas` command's long work: a search's trials, training the base
model, finalize's long fine-tune. tqdm on a terminal; on a stderr that is not one (a CI log, a
file, a pipe) plain lines instead of carriage-return redraws: one when the work starts, one at
most every ``PLAIN_INTERVAL_S`` seconds and one when it ends. ``enabled=False``
(`--no-progress`) prints nothing."""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0


class _Lines:
    """tqdm's redraws as whole lines: each carriage-return redraw becomes one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, unit: str, desc: str, enabled: bool = True,
                 stream: IO[str] | None = None) -> tqdm:
    """A bar of ``total`` ``unit``s on ``stream`` (default: stderr as it is now)."""
    stream = sys.stderr if stream is None else stream
    plain = not (hasattr(stream, "isatty") and stream.isatty())
    if plain:
        return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, file=_Lines(stream),
                    mininterval=PLAIN_INTERVAL_S, maxinterval=PLAIN_INTERVAL_S, ncols=100,
                    ascii=True)
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, file=stream,
                dynamic_ncols=True)
