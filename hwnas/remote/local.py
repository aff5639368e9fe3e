"""The `local` device: the real agent as a subprocess on a free loopback port.

Same client, same protocol, same agent code as a remote device: no in-process shortcut.
The controller writes the agent's configuration (power sources) and a fresh secret token
into the state folder (both 0600), and the agent dies with the controller, even under
kill -9: it holds the read end of a pipe only the controller can write to (EOF when the
controller is gone) and, on Linux, a parent-death signal.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hwnas_agent.config import write_private

from hwnas.errors import DeviceError

if TYPE_CHECKING:
    from hwnas.remote.client import AgentClient

START_TIMEOUT_S = 60.0
CONFIG_NAME = "agent.json"


class LocalAgentProcess:
    """``power_sources`` maps a source name to ``{"kind": ..., "options": {...}}``, as in the
    agent configuration; ``log_path`` receives the agent's stderr (default: agent.log in the
    state folder); ``token_file`` puts the token elsewhere (a simulated install)."""

    def __init__(self, state_dir: Path | None = None, python: str = sys.executable,
                 extra_args: tuple[str, ...] = (), *,
                 power_sources: Mapping[str, Mapping[str, Any]] | None = None,
                 log_path: Path | None = None, token_file: Path | None = None,
                 worker_memory_mb: float | None = None) -> None:
        self.python = python
        self.extra_args = tuple(extra_args)
        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hwnas-agent-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.power_sources = {name: dict(spec) for name, spec in (power_sources or {}).items()}
        self.log_path = Path(log_path) if log_path is not None else self.state_dir / "agent.log"
        self.token_file = Path(token_file) if token_file is not None else self.state_dir / "token"
        self.worker_memory_mb = worker_memory_mb
        self.config_path = self.state_dir / CONFIG_NAME
        self.token = ""
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._lease: int | None = None

    def write_config(self) -> None:
        """The agent's configuration and a fresh token, readable by this user only."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"state_dir": str(self.state_dir.resolve()),
                                  "token_file": str(self.token_file.resolve()),
                                  "power_sources": self.power_sources}
        if self.worker_memory_mb is not None:
            config["worker_memory_mb"] = self.worker_memory_mb
        write_private(str(self.config_path), json.dumps(config, indent=1, sort_keys=True))
        self.token = secrets.token_hex(32)
        self.token_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(str(self.token_file), self.token + "\n")

    def start(self, port: int = 0, fresh_config: bool = True) -> int:
        """Start the agent on ``port`` (0: a free one); returns the port it listens on.
        ``fresh_config``: write the configuration and a new token first."""
        if fresh_config:
            self.write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "hwnas_agent", "serve", "--config", str(self.config_path),
                   "--host", "127.0.0.1", "--port", str(port), "--lease-stdin", *self.extra_args]
        if threading.current_thread() is threading.main_thread():
            # the parent-death signal fires when the *thread* that started the child ends:
            # only the main thread lives as long as this process
            command += ["--parent-pid", str(os.getpid())]
        lease_read, self._lease = os.pipe()
        try:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdin=lease_read, stdout=subprocess.PIPE,
                                                stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        except OSError as exc:
            self._close_lease()
            raise DeviceError(f"cannot start the local agent with {self.python}: {exc}") from None
        finally:
            os.close(lease_read)
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
        self.stop()
        raise DeviceError(f"the local agent did not start: {self._log_tail() or 'no output'}; "
                          f"is hwnas-agent installed (pip install -e agents)? (log: {self.log_path})")

    def restart(self) -> int:
        """Stop and start again on the same port with the same configuration and token, as a
        service manager restarts an installed agent (a job it was running ends interrupted)."""
        assert self.port is not None, "start() the agent first"
        port = self.port
        self.stop()
        return self.start(port, fresh_config=False)

    def client(self, device: str = "local") -> "AgentClient":
        """A client of this agent, with its token."""
        from hwnas.remote.client import AgentClient
        from hwnas.remote.transport import LoopbackTransport

        assert self.port is not None, "start() the agent first"
        return AgentClient(LoopbackTransport(self.port, description=f"agent of {device}"),
                           device, self.token, "made for this run")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _close_lease(self) -> None:
        if self._lease is not None:
            os.close(self._lease)
            self._lease = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_lease()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
