"""The `local` device: the real agent as a subprocess on a free loopback port.

Same client, same protocol, same agent code as a remote device: no in-process shortcut.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwnas.errors import DeviceError

START_TIMEOUT_S = 60.0


class LocalAgentProcess:
    def __init__(self, state_dir: Path | None = None, python: str = sys.executable,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.python = python
        self.extra_args = tuple(extra_args)
        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hwnas-agent-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "hwnas_agent", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--state-dir", str(self.state_dir), *self.extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "listening":
                    self.port = int(event["port"])
                    return self.port
            if self.process.poll() is not None:
                break
        stderr = ""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read().decode("utf-8", "replace")[-2000:]
        self.stop()
        raise DeviceError(f"the local agent did not start: {stderr.strip() or 'no output'}; "
                          f"is hwnas-agent installed (pip install -e agents)?")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr) if self.process else ():
            if stream is not None:
                stream.close()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
