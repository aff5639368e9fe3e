"""Processes that do not outlive their parent, even under kill -9.

Two mechanisms, because neither holds everywhere on its own:
- Linux's parent-death signal (prctl PR_SET_PDEATHSIG), set by the child itself; it fires
  when the *thread* that started the child ends, so it is used only where that thread lives
  as long as the parent process (the agent's measuring thread, the controller's main thread);
- a pipe on the child's stdin whose write end only the parent holds: when the parent dies the
  kernel closes it and the child reads EOF. Portable to any POSIX system.
And a record of a worker's pid with its start time, so that a restarted agent can tell a
leftover worker of an interrupted job from an unrelated process that reused the pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the process's own symbols include libc's (find_library would fork ldconfig)
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Set the parent-death signal, then check the parent did not die before it was set."""
    set_parent_death_signal(signum)
    if os.getppid() != parent_pid:
        os._exit(70)


def on_stdin_eof(action: Callable[[], None], stream_fd: int = 0) -> threading.Thread:
    """Run ``action`` when stdin reaches EOF (the parent holding its write end is gone)."""

    def watch() -> None:
        while True:
            try:
                chunk = os.read(stream_fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
        action()

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread


def start_ticks(pid: int, proc_root: str = "/proc") -> Optional[int]:
    """The start time of a live process in clock ticks since boot (field 22 of /proc/PID/stat);
    None when there is no such process or it is a zombie (dead, waiting to be reaped)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or ')'
    fields = text[text.rfind(")") + 2:].split()
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def kill_group_if_same(pid: int, ticks: Optional[int], timeout_s: float = 10.0,
                       proc_root: str = "/proc") -> str:
    """Kill the process group led by ``pid`` if that process is still the one started at
    ``ticks``, and wait until it is gone. Returns what happened, for the job's record."""
    if ticks is None or start_ticks(pid, proc_root) != ticks:
        return "gone"
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "not ours"
    deadline = time.monotonic() + timeout_s
    while start_ticks(pid, proc_root) == ticks and time.monotonic() < deadline:
        time.sleep(0.02)
    return "killed" if start_ticks(pid, proc_root) != ticks else "still running"
