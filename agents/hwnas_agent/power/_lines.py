"""A program that prints one reading per line (tegrastats, an external meter), read in a thread."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Callable, List, Optional

from hwnas_agent.power import PowerSample, SensorUnavailable

FIRST_LINE_TIMEOUT_S = 10.0


class LineProgram:
    def __init__(self, argv: List[str], parse: Callable[[str], Optional[PowerSample]]) -> None:
        if not argv or shutil.which(argv[0]) is None:
            raise SensorUnavailable("program %r not found" % (argv[0] if argv else ""))
        self._parse = parse
        self._latest: Optional[PowerSample] = None
        self._error: Optional[str] = None
        self._ready = threading.Event()
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         universal_newlines=True, bufsize=1)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        if not self._ready.wait(FIRST_LINE_TIMEOUT_S) or self._latest is None:
            self.close()
            raise SensorUnavailable("%s printed no reading in %.0f s%s" % (
                " ".join(argv), FIRST_LINE_TIMEOUT_S, ": " + self._error if self._error else ""))

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                sample = self._parse(line)
            except SensorUnavailable as exc:
                self._error = str(exc)
                break
            if sample is not None:
                self._latest = sample
                self._ready.set()
        self._ready.set()

    def latest(self) -> PowerSample:
        if self._latest is None:
            raise SensorUnavailable("no reading yet")
        latest = self._latest
        return PowerSample(latest.watts, latest.energy_j, latest.rails_w, time.monotonic())

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
