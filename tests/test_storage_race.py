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
