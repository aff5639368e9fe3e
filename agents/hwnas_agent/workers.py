"""The agent's worker processes: one at a time, of either kind (WorkerSlot), each in its own
process group under the agent's memory limit, dying with the agent (lifeline.py); and the load
check every uploaded model gets (Workers.inspect) before it is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hwnas_agent.protocol import ProtocolError
from hwnas_agent.wire_text import redact

INSPECT_TIMEOUT_S = 120.0
LOG_TAIL_BYTES = 2000


class WorkerSlot:
    """One worker process at a time, a measurement or a load check.

    RLIMIT_DATA is per process, so a per-worker limit let a measure worker and a load check
    together take twice worker_memory_mb (1,879 MB against 1,500 MB on a device). Splitting
    the budget between them would halve what one model may use; summing RSS from a supervisor
    polls, and a burst between two polls passes. One at a time keeps the whole budget for each
    worker and holds by construction; it also keeps a load check (a CPU- and memory-heavy
    session build) out of a timed phase, which it would slow. A load check waiting goes before
    the next queued job: an upload waits at most for the job that runs (its timeout_s)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = False
        self._checks_waiting = 0

    def acquire(self, load_check: bool, give_up: Callable[[], bool] = lambda: False) -> bool:
        with self._changed:
            self._checks_waiting += load_check
            try:
                while self._held or (not load_check and self._checks_waiting):
                    if give_up():
                        return False
                    self._changed.wait(timeout=0.2)
                self._held = True
                return True
            finally:
                self._checks_waiting -= load_check

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    @contextlib.contextmanager
    def load_check(self) -> Iterator[None]:
        self.acquire(load_check=True)
        try:
            yield
        finally:
            self.release()


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return "signal %d" % -returncode


def tail(path: str) -> str:
    """The end of a worker's log, fit for the wire (a runtime's output can print tensor
    values): the whole log stays on the device."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            return redact(handle.read().decode("utf-8", "replace").strip(), keep_end=True)
    except OSError:
        return ""


def reap_group(pgid: int) -> None:
    """Whatever the worker started (a meter program) ends with it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Workers:
    """How the agent starts a worker: its command line and its process."""

    def __init__(self, python: str, memory_bytes: Optional[int]) -> None:
        self.python = python
        self.memory_bytes = memory_bytes

    def command(self, mode: str, *args: str) -> List[str]:
        command = [self.python, "-m", "hwnas_agent.worker", mode, *args,
                   "--parent-pid", str(os.getpid())]
        if self.memory_bytes:
            command += ["--memory-limit-bytes", str(self.memory_bytes)]
        return command

    def spawn(self, command: List[str], stdout: Any, stderr: Any,
               record: Optional[Callable[[subprocess.Popen], None]] = None
               ) -> Tuple[subprocess.Popen, int]:
        """A worker in its own process group, holding the read end of a pipe whose write end
        (returned) only this agent holds: it reads EOF, and exits, when the agent dies."""
        lease_read, lease_write = os.pipe()
        try:
            process = subprocess.Popen(command, stdin=lease_read, stdout=stdout, stderr=stderr,
                                       start_new_session=True)
        except BaseException:
            os.close(lease_write)
            raise
        finally:
            os.close(lease_read)
        if record is not None:
            record(process)
        return process, lease_write

    def memory_note(self) -> str:
        if not self.memory_bytes:
            return ""
        return (" (the worker's memory limit is %.0f MB: worker_memory_mb in the agent "
                "configuration, the memory all the agent's workers share, one at a time)"
                % (self.memory_bytes / 1048576.0))

    def inspect(self, path: str, data_files: Sequence[str] = ()) -> Dict[str, Any]:
        """Load the model once in a separate process: corrupt bytes cannot crash the agent.
        ``data_files``: the other files of a multi-file model, which it may read."""
        command = self.command("inspect", path, "--data-files", json.dumps(list(data_files)))
        process, lease = self.spawn(command, subprocess.PIPE, subprocess.PIPE)
        try:
            out, err = process.communicate(timeout=INSPECT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise ProtocolError(422, "invalid_model", "loading the model took over %.0f s"
                                % INSPECT_TIMEOUT_S)
        finally:
            os.close(lease)
        try:
            payload = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            payload = None
        if process.returncode == 0 and isinstance(payload, dict) and "inputs" in payload:
            return payload
        if process.returncode != 0 and err:  # the whole text, for the device's log only
            sys.stderr.write("hwnas-agent: loading %s failed:\n%s\n"
                             % (path, err.decode("utf-8", "replace").rstrip()))
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            kind = payload["error"].get("type", "error")
            text = payload["error"].get("message", "")
            if kind == "ModelRefused":  # the worker's own check (onnx_refs) said why
                raise ProtocolError(422, "invalid_model", "model refused: %s" % text)
            message = text if kind == "MalformedModel" else "%s: %s" % (kind, text)
        elif process.returncode < 0:
            message = "onnxruntime crashed (%s) loading it%s" % (
                signal_name(process.returncode), self.memory_note())
        else:
            message = redact(err.decode("utf-8", "replace").strip(), keep_end=True)
        raise ProtocolError(422, "invalid_model", "not a loadable ONNX model: %s" % message.strip())
