"""A Ctrl-C that Python drops (it landed in a garbage-collector callback or a ``__del__``:
"Exception ignored in ...") still stops the search at its next step (CI, 2026-12-07: it
landed in SQLAlchemy's weakref callback, and the search ran on and exited 0)."""

import os
import signal
import sys
import time

import numpy as np
import pytest
from torch import nn

from hwnas.compress.finetune import finetune
from hwnas.config.models import DatasetSpec, FineTuneSettings
from hwnas.data import load_task
from hwnas.interrupts import check, held


class InterruptsWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__, where Python drops its error


def _dropped_interrupt() -> None:
    InterruptsWhenCollected()  # collected at once: its KeyboardInterrupt is printed, not raised


def test_a_dropped_ctrl_c_stops_the_next_fine_tuning_step(monkeypatch):
    task = load_task(DatasetSpec(builtin="digits"))
    features = int(np.prod(task.train.batch(np.arange(1))[0].shape[1:]))
    student, teacher = (nn.Sequential(nn.Flatten(), nn.Linear(features, 10)) for _ in range(2))
    settings = FineTuneSettings(max_steps=50, max_seconds=60, batch_size=16)
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: dropped.append(raised.exc_type))
    with held():
        _dropped_interrupt()
        assert dropped == [KeyboardInterrupt]  # Python dropped it ("Exception ignored")
        with pytest.raises(KeyboardInterrupt):
            finetune(student, teacher, task, settings)
    check()  # the block is over: nothing is remembered after it
    assert finetune(student, teacher, task, settings)["steps"] == 50


def test_an_ignored_sigint_stays_ignored():
    """`cmd &` starts a job with SIGINT ignored: that is the user's choice, and it is kept."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            check()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_raised_in_sqlalchemys_pool_leaves_no_traceback_on_the_terminal():
    """Where SIGTERM's exception (`hwnas export`) or Ctrl-C's lands while SQLAlchemy's pool
    returns a connection, the pool logs its traceback and raises it on; the command's own one
    line says it was interrupted (CI, 2026-12-07: the traceback stood above that line). The
    pool's other lines still reach the terminal."""
    import subprocess

    code = ("import logging\n"
            "from hwnas.logs import quiet_terminal\n"
            "from hwnas.cli.result_verbs import Interrupted\n"
            "quiet_terminal()\n"
            "pool = logging.getLogger('sqlalchemy.pool.impl.QueuePool')\n"
            "for error in (Interrupted(15), KeyboardInterrupt(), OSError('disk gone')):\n"
            "    try:\n"
            "        raise error\n"
            "    except BaseException:\n"
            "        pool.error('Exception during reset or similar', exc_info=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Interrupted" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert done.stderr.count("Exception during reset or similar") == 1
    assert "OSError: disk gone" in done.stderr
