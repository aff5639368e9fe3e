"""Which controller runs a trial, and whether it still lives.

A controller killed mid-trial leaves the trial RUNNING. Optuna's heartbeats find it only
after a grace period, which a quick re-run would not wait out; on the controller's own host
the answer is immediate: its process is gone (or its pid now belongs to another process).
Trials of other hosts are left to the heartbeats.
"""

from __future__ import annotations

import datetime
import os
import socket
import warnings
from typing import Callable

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from hwnas.records import TrialOutcome


def controller_id() -> str:
    """host:pid:start-time of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"


def process_start_time(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot), '' if there is none;
    a pid reused by another process has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def is_gone(controller: str | None) -> bool:
    """True only where it is certain: a controller of this host whose process has ended."""
    if not controller or controller.count(":") < 2:
        return False
    host, pid, start = controller.rsplit(":", 2)
    return host == socket.gethostname() and pid.isdigit() and process_start_time(int(pid)) != start


ORPHAN_AFTER_S = 600.0


def abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """Run by a controller of this host that is gone; or an orphan: created, but no controller
    ever claimed it (its creator died at once, or lost the database while creating it)."""
    controller = TrialOutcome.from_trial(trial).controller
    if controller is not None:
        return is_gone(controller)
    started = trial.datetime_start
    return started is not None and \
        (datetime.datetime.now() - started).total_seconds() > ORPHAN_AFTER_S


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials no live controller runs, and retry their candidates: stale
    heartbeats (any host), controllers of this host that are gone (at once), orphans."""
    with warnings.catch_warnings():  # heartbeats are documented but marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    return _fail_and_retry(study, abandoned)


def fail_own_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of this controller and retry their candidates: what an
    interrupted controller (Ctrl-C) does before it exits, so that none is left RUNNING."""
    me = controller_id()
    return _fail_and_retry(study, lambda trial: TrialOutcome.from_trial(trial).controller == me)


def _fail_and_retry(study: optuna.Study,
                    which: Callable[[optuna.trial.FrozenTrial], bool]) -> list[int]:
    """Fail the RUNNING trials ``which`` picks and enqueue their retries."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not which(trial):
            continue
        # the row-locked state change is the claim: of several controllers failing the same
        # trial at once, exactly one wins and enqueues its retry (never two retries)
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        retry_trial(study, trial.number)
    return failed


def retry_trial(study: optuna.Study, number: int) -> None:
    """Enqueue a retry of a trial that is failing (or failed): the same retry the heartbeat
    would have made, carrying what it recorded (a retry reuses what it measured)."""
    frozen = study.get_trials(deepcopy=True)[number]
    get_callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)
    retry = get_callback() if get_callback is not None else None
    if retry is not None:
        retry(study, frozen)
    else:
        study.enqueue_trial(frozen.params, user_attrs=frozen.user_attrs, skip_if_exists=False)
