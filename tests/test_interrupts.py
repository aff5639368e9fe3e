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
