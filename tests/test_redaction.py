"""No credential at rest: what hwnas writes names a storage without its password, and a later
command gets the password from the user again (HWNAS_STORAGE, --storage, libpq's own)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import optuna
import pytest

from hwnas.errors import ConfigError
from hwnas.redaction import redact
from hwnas.run import RUN_FILE, RunFolder
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE
from tests.search.test_search_e2e import HWNAS

SECRET = "Pw-9f3Kq-s3cret"


@pytest.mark.parametrize("text, shown", [
    (f"postgresql+psycopg2://hwnas:{SECRET}@db:5432/hwnas",
     "postgresql+psycopg2://hwnas:***@db:5432/hwnas"),
    (f"postgresql://hwnas:{SECRET}/x:y@db/hwnas", "postgresql://hwnas:***@db/hwnas"),
    (f"postgresql://hwnas@db/hwnas?sslmode=require&password={SECRET}",
     "postgresql://hwnas@db/hwnas?sslmode=require&password=***"),
    (f"mysql+pymysql://u@db/x?ssl_key=/k.pem&auth_token={SECRET}",
     "mysql+pymysql://u@db/x?ssl_key=***&auth_token=***"),
    (f"study s (storage postgresql://u:{SECRET}@db/x) and s3://bucket/prefix",
     "study s (storage postgresql://u:***@db/x) and s3://bucket/prefix"),
    ("sqlite:////runs/a/study.db and file:///shared/store and postgresql://u@db:5432/x",
     "sqlite:////runs/a/study.db and file:///shared/store and postgresql://u@db:5432/x"),
])
def test_redact_hides_passwords_and_credential_parameters(text, shown):
    assert redact(text) == shown and redact(shown) == shown


@pytest.fixture()
def no_credentials(monkeypatch, tmp_path):
    """An environment that gives no password: none of hwnas's, nor libpq's."""
    for name in ("HWNAS_STORAGE", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    return {k: v for k, v in os.environ.items() if k not in ("HWNAS_STORAGE", "PGPASSWORD")}


def test_a_run_folder_asks_for_the_password_it_does_not_keep(tmp_path, no_credentials,
                                                             monkeypatch):
    url = f"postgresql+psycopg2://hwnas:{SECRET}@db:5432/hwnas"
    (tmp_path / RUN_FILE).write_text(json.dumps({"storage": redact(url), "study_name": "s"}))
    with pytest.raises(ConfigError, match=r"run.json: the storage's password is not kept in the "
                                          r"run folder \(postgresql\+psycopg2://hwnas:\*\*\*@db"
                                          r":5432/hwnas\); give it: HWNAS_STORAGE=") as caught:
        RunFolder.load(tmp_path)
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.setenv("HWNAS_STORAGE", url)
    assert RunFolder.load(tmp_path).storage_url == url
    monkeypatch.setenv("HWNAS_STORAGE", url.replace("db:5432", "other:5432"))
    with pytest.raises(ConfigError, match=r"HWNAS_STORAGE names another storage \(.*other:5432"):
        RunFolder.load(tmp_path)
    monkeypatch.delenv("HWNAS_STORAGE")
    monkeypatch.setenv("PGPASSWORD", SECRET)  # libpq's own: the URL goes without a password
    assert RunFolder.load(tmp_path).storage_url == "postgresql+psycopg2://hwnas@db:5432/hwnas"
    # a run folder an older hwnas wrote with the password: used as it is
    (tmp_path / RUN_FILE).write_text(json.dumps({"storage": url, "study_name": "s"}))
    assert RunFolder.load(tmp_path).storage_url == url


def test_kept_configs_and_run_json_hold_no_password(tmp_path):
    url = f"postgresql://hwnas:{SECRET}@db/hwnas"
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(DIGITS_SPACE + f"search: {{storage: '{url}', n_trials: 2}}\n")
    device.write_text(FAST_DEVICE)
    run = RunFolder(tmp_path / "run", url, "s", f"s3://bucket/x?secret_key={SECRET}")
    version = run.record_configs(space, [device])
    for path in (tmp_path / "run").rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["storage"] == "postgresql://hwnas:***@db/hwnas"
    assert info["artifact_store"] == "s3://bucket/x?secret_key=***"
    assert run.config(version)["search"]["storage"] == "postgresql://hwnas:***@db/hwnas"
    # the version hashes what is kept: it tells nothing of the password, nor changes with it
    space.write_text(space.read_text().replace(SECRET, "another-password"))
    assert RunFolder.config_version(space, [device]) == version


def test_the_run_log_hides_credentials(tmp_path):
    from hwnas.logs import run_log

    with run_log(tmp_path / "run.log"):
        logging.getLogger("hwnas.test").warning("connecting to %s",
                                                f"postgresql://u:{SECRET}@db/x")
        try:
            raise RuntimeError(f"failed: mysql://u:{SECRET}@db/x")
        except RuntimeError:
            logging.getLogger("optuna.test").exception("trial failed")
    text = (tmp_path / "run.log").read_text()
    assert SECRET not in text and "postgresql://u:***@db/x" in text and "mysql://u:***@db" in text


# -- a real run on a PostgreSQL server that asks for a password ----------------------------

@pytest.fixture(scope="module")
def password_url():
    from hwnas.testing.postgres import PostgresCluster

    with PostgresCluster() as cluster:
        yield cluster.password_role("hwnas_pw", SECRET)


def run_hwnas(*args: object, env: dict[str, str], timeout: float = 900
              ) -> subprocess.CompletedProcess:
    return subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def no_secret_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*")
            if path.is_file() and SECRET.encode() in path.read_bytes()]


def test_no_password_at_rest_after_a_real_run_and_resume_asks_for_it(tmp_path, password_url,
                                                                    no_credentials):
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(DIGITS_SPACE + ENQUEUED.replace("n_trials: 5", "n_trials: 2"))
    device.write_text(FAST_DEVICE)
    run_dir, store = tmp_path / "run", tmp_path / "store"
    search = ("search", space, "--device", device, "--run-dir", run_dir, "--no-progress")
    done = run_hwnas(*search, "--storage", password_url, "--artifact-store", f"file://{store}",
                     env=no_credentials)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert SECRET not in done.stdout + done.stderr
    assert "(storage postgresql+psycopg2://hwnas_pw:***@127.0.0.1" in done.stdout
    assert no_secret_in(run_dir) == [] and no_secret_in(store) == []
    study = optuna.load_study(study_name="digits-test--test-local", storage=password_url)
    assert SECRET not in json.dumps(study.user_attrs)

    # resuming without the password: one line saying how to give it, not a new SQLite study
    for argv in (("report", run_dir), (*search, "--trials", "3")):
        refused = run_hwnas(*argv, env=no_credentials)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "password is not kept in the run folder" in refused.stderr
        assert "HWNAS_STORAGE=" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (run_dir / "study.db").exists()

    resumed = run_hwnas(*search, "--trials", "3", env={**no_credentials,
                                                       "HWNAS_STORAGE": password_url})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 trials done, 1 to go" in resumed.stdout
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3

    libpq = {**no_credentials, "PGPASSWORD": SECRET}
    outputs = [resumed.stdout + resumed.stderr]
    for argv in (("report", run_dir), ("status", run_dir),
                 ("status", password_url, "--study", "digits-test--test-local"),
                 ("export", run_dir, "--trial", 0)):
        shown = run_hwnas(*argv, env=libpq)
        assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
        outputs.append(shown.stdout + shown.stderr)
    assert "hwnas_pw:***@127.0.0.1" in outputs[2] + outputs[3]
    assert all(SECRET not in output for output in outputs)
    assert no_secret_in(run_dir) == [] and no_secret_in(store) == []
    card = json.loads(next((run_dir / "exported").glob("*.card.json")).read_text())
    assert card["storage"].startswith("postgresql+psycopg2://hwnas_pw@127.0.0.1")  # PGPASSWORD's

    # a wrong password: refused at once in one line, not waited out as a lost database
    wrong = password_url.replace(SECRET, "not-the-password")
    refused = run_hwnas("status", wrong, "--study", "digits-test--test-local",
                        env=no_credentials, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "refused the credentials" in refused.stderr and "not-the-password" not in refused.stderr
