"""A program that prints one reading per line (tegrastats, an external meter), read in a thread.

Each reading is stamped with the monotonic time its line arrived, so that a reading polled
twice is recognisably the same reading. A program that exits, stops printing, or prints a
line its parser refuses makes every later read() raise SensorUnavailable with the reason:
the last good reading is never handed out again as if it were new.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, List, Optional

from hwnas_agent.power import PowerSample, SensorUnavailable

FIRST_LINE_TIMEOUT_S = 10.0
STDERR_TAIL = 2000


class LineProgram:
    def __init__(self, argv: List[str], parse: Callable[[str], Optional[PowerSample]],
                 rate_hz: float = 10.0) -> None:
        if not argv or shutil.which(argv[0]) is None:
            raise SensorUnavailable("program %r not found" % (argv[0] if argv else ""))
        self.argv = list(argv)
        self._parse = parse
        # silent for this long: the program is stuck, its readings are not current any more
        self.period_s = 1.0 / rate_hz
        self.stale_after_s = max(5.0 * self.period_s, 2.0)
        self._latest: Optional[PowerSample] = None
        self._error: Optional[str] = None
        self._ended = False
        self._stderr = ""
        self._skipped = ""
        self._ready = threading.Event()
        # its own process group: close() ends the meter and anything it started (a child
        # holding the pipe open would otherwise keep the reader blocked)
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         universal_newlines=True, bufsize=1,
                                         start_new_session=True)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        if not self._ready.wait(FIRST_LINE_TIMEOUT_S) or self._latest is None:
            reason = self._error or "%s%s" % (
                self._exit_reason() or "printed no reading in %.0f s" % FIRST_LINE_TIMEOUT_S,
                " (no line was a reading; last one: %r)" % self._skipped if self._skipped else "")
            self.close()
            raise SensorUnavailable("%s: %s" % (self.name, reason))

    @property
    def name(self) -> str:
        return " ".join(self.argv)

    def _pump(self) -> None:
        assert self._process.stdout is not None
        try:
            for line in self._process.stdout:
                arrived = time.monotonic()
                try:
                    sample = self._parse(line)
                except SensorUnavailable as exc:
                    self._error = "refused the line %r: %s" % (line.strip()[:200], exc)
                    break
                if sample is not None:
                    sample.time_s = arrived
                    self._latest = sample
                    self._ready.set()
                elif line.strip():
                    self._skipped = line.strip()[:200]
        except (OSError, ValueError):  # closed under us at close()
            pass
        self._ended = True
        self._ready.set()

    def _pump_stderr(self) -> None:
        assert self._process.stderr is not None
        try:
            for line in self._process.stderr:
                self._stderr = (self._stderr + line)[-STDERR_TAIL:]
        except (OSError, ValueError):  # closed under us at close()
            pass

    def _exit_reason(self) -> Optional[str]:
        code = self._process.poll()
        if code is None and not self._ended:
            return None
        if code is None:
            try:
                code = self._process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                return "closed its output"
        tail = self._stderr.strip()
        return "exited with code %s%s" % (code, "; stderr: " + tail if tail else "")

    def latest(self) -> PowerSample:
        if self._error:
            raise SensorUnavailable("%s %s" % (self.name, self._error))
        ended = self._exit_reason() if self._ended else None
        if ended:
            raise SensorUnavailable("%s %s" % (self.name, ended))
        if self._latest is None:
            raise SensorUnavailable("%s: no reading yet" % self.name)
        silent = time.monotonic() - self._latest.time_s
        if silent > self.stale_after_s:
            raise SensorUnavailable("%s printed no reading for %.1f s (expected one every %.2f s)"
                                    % (self.name, silent, self.period_s))
        return self._latest

    def close(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self._process.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self._process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self._thread.join(timeout=5)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
