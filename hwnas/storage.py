"""The study's Optuna storage: RDB storages with heartbeats, waiting out a lost database with
back-off, and the retry of a trial whose controller is gone (its candidate enqueued again with
what it had found)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings
from typing import Any, Callable

import optuna

from hwnas.errors import ConfigError, StorageUnreachable
from hwnas.records import TrialOutcome
from hwnas.redaction import redact
from hwnas.study_file import NOT_TRANSIENT, refuse_damaged, sqlite_code

HEARTBEAT_S = 10
GRACE_S = 30
OUTAGE_S = 600.0  # how long a controller waits out a lost database before it gives up
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def _transient(exc: BaseException) -> bool:
    """A lost connection (database restarted, network down), not a bad request, nor a damaged
    or full SQLite file."""
    import sqlalchemy.exc

    if sqlite_code(exc) in NOT_TRANSIENT:
        return False
    lost = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.DisconnectionError)
    if isinstance(exc, sqlalchemy.exc.IntegrityError) and "alembic_version" in str(exc):
        # another process made the same new database at the same instant (a worker, `hwnas
        # status` polling a search that starts): its schema is there on the next try
        return True
    return (isinstance(exc, lost) or isinstance(exc.__cause__, lost)) and not _refused(exc)


def _refused(exc: BaseException) -> bool:
    """The database answered and refused the credentials: waiting will not change that."""
    text = str(exc).lower()
    return any(words in text for words in ("authentication failed", "no password supplied",
                                           "access denied for user"))


def _wait_out(call: Callable[[int], Any], what: str, outage_s: float) -> Any:
    """``call(attempt)`` until it returns; a lost connection is retried with back-off for up to
    ``outage_s`` (then its error is raised), any other error at once."""
    deadline = time.monotonic() + outage_s
    attempt = 0
    while True:
        try:
            return call(attempt)
        except Exception as exc:
            if not _transient(exc) or time.monotonic() > deadline:
                raise
            logging.getLogger("hwnas.storage").warning(
                "database unreachable (%s); retrying %s", type(exc).__name__, what)
            time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1


def _retrying(method: Any, name: str) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        def once(attempt: int) -> Any:
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # an earlier attempt was committed before the link dropped: done, not twice
                if attempt and name == "set_trial_state_values":
                    return True
                raise
        try:
            return _wait_out(once, name, self.outage_s)
        except Exception as exc:
            refuse_damaged(exc, self.url, reading=name.startswith(("get_", "_get_")))
            raise
    call.__name__ = name
    return call


def _set_trial_state_values(self: Any, trial_id: int, state: optuna.trial.TrialState,
                            values: Any = None) -> bool:
    """Optuna's state change, but taking a waiting trial is one conditional UPDATE: Optuna
    reads the row and then writes it, which SQLite does not lock (its FOR UPDATE is a no-op),
    so two threads of a pool popping one enqueued trial both got it and both ran it (the
    second's tell then failed: "Cannot tell a COMPLETE trial"; CI, 2026-12-07)."""
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    if state != TrialState.RUNNING or values is not None:
        return RDBStorage.set_trial_state_values(self, trial_id, state, values)
    import datetime

    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    with self.engine.begin() as connection:
        claimed = connection.execute(
            sqlalchemy.update(table)
            .where(table.c.trial_id == trial_id, table.c.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.datetime.now())).rowcount
    if claimed == 1:
        return True
    self.check_trial_is_updatable(trial_id, self.get_trial(trial_id).state)
    return False  # another controller took it first


@functools.cache
def _retrying_storage_class() -> type:
    from optuna.storages import RDBStorage

    methods = ("create_new_study", "set_study_user_attr", "set_study_system_attr",
               "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
               "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
               "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
               "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
               "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
               "get_best_trial", "record_heartbeat", "_get_stale_trial_ids")
    namespace: dict[str, Any] = {
        "__doc__": "Optuna's RDB storage that waits out a lost database with back-off.",
        "outage_s": OUTAGE_S}
    for name in methods:
        namespace[name] = _retrying(getattr(RDBStorage, name), name)
    namespace["set_trial_state_values"] = _retrying(_set_trial_state_values,
                                                    "set_trial_state_values")
    return type("RetryingRDBStorage", (RDBStorage,), namespace)


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    """Optuna storage for a URL. RDB storages get heartbeats (a resumed search finds the trials
    a killed controller left RUNNING: failed, then retried) and wait out a lost database
    connection with back-off (a worker that loses the database continues when it is back)."""
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        return url
    def connect(_: int) -> optuna.storages.BaseStorage:
        with warnings.catch_warnings():  # heartbeats are documented but marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _retrying_storage_class()(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                heartbeat_stale_trial_callback=RetryAbandoned(max_retry=2))

    try:  # connecting is waited out like every other call: a worker may start mid-outage
        return _wait_out(connect, "connecting", OUTAGE_S)
    except Exception as exc:
        refuse_damaged(exc, url)
        if _refused(exc):
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"the study database {redact(url)} refused the credentials "
                              f"({redact(first)}); give the right password: --storage URL, "
                              f"$HWNAS_STORAGE, or PGPASSWORD / ~/.pgpass") from None
        if not _transient(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StorageUnreachable(f"the study database {redact(url)} has been unreachable for "
                                 f"{OUTAGE_S:.0f} s ({type(exc).__name__}: {first})") from exc


class RetryAbandoned:
    """Re-enqueue the candidate of a trial whose controller is gone (Optuna's heartbeat retry,
    but the copy carries what was found and not who ran it: its new runner claims it)."""

    def __init__(self, max_retry: int = 2) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
        found = TrialOutcome.from_attributes(trial.user_attrs, "RUNNING")
        if len(history) > self.max_retry or found.finalized_from is not None:
            return  # an interrupted `hwnas finalize` is simply run again, not by the search
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params,
            distributions=trial.distributions,
            user_attrs=dataclasses.replace(found, controller=None, twin_role=None).attributes(),
            system_attrs={**trial.system_attrs, "failed_trial": history[0],
                          "retry_history": history}))
