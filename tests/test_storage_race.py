"""Two controllers (or a search and a `hwnas status` polling it) making one new SQLite study
at the same instant: both initialise its schema, one of them loses the race on
alembic_version; that is waited out, not a failed search (a CI run of the device-pool test
hit it, 2026-12-07)."""

import threading

import sqlalchemy.exc

from hwnas.storage import _transient, make_storage


def test_a_lost_schema_race_is_transient():
    race = sqlalchemy.exc.IntegrityError(
        "INSERT INTO alembic_version (version_num) VALUES ('v3.2.0.a')", (),
        Exception("UNIQUE constraint failed: alembic_version.version_num"))
    other = sqlalchemy.exc.IntegrityError("INSERT INTO trials", (), Exception("UNIQUE"))
    assert _transient(race) and not _transient(other)


def test_two_connections_making_one_new_database_at_once_both_get_it(tmp_path):
    errors: list[BaseException] = []
    for index in range(12):
        url = f"sqlite:///{tmp_path / f'study-{index}.db'}"
        start = threading.Barrier(3)

        def connect() -> None:
            start.wait()
            try:
                make_storage(url)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=connect) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors[:1]


def test_two_threads_never_take_the_same_enqueued_trial(tmp_path):
    """A pool's threads (or SQLite workers) popping one enqueued trial at once: exactly one
    gets it, the other a trial of its own, started (Optuna's read-then-write let both take it
    under SQLite, 28 of 100 tries here: both ran it and the second's tell failed with "Cannot
    tell a COMPLETE trial", a CI run of the device-pool test, 2026-12-07)."""
    import warnings

    import optuna

    shared = []
    for index in range(30):
        storage = make_storage(f"sqlite:///{tmp_path / f'queue-{index}.db'}")
        study = optuna.create_study(storage=storage, study_name="queue")
        study.enqueue_trial({"x": 1.0})
        study.enqueue_trial({"x": 2.0})
        start, taken = threading.Barrier(2), []

        def ask() -> None:
            start.wait()
            with warnings.catch_warnings():  # heartbeats outside optimize(): expected here
                warnings.simplefilter("ignore")
                taken.append(study.ask()._trial_id)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(set(taken)) != 2:
            shared.append(index)
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        assert sorted(t._trial_id for t in running) == sorted(set(taken))
        assert all(t.datetime_start is not None for t in running)
    assert not shared, f"both threads took one trial in tries {shared}"
