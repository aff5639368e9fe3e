"""Several controllers on one study in a real PostgreSQL (a private cluster started here):
one parent for all, artifacts in a shared store, no lost or doubled work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from hwnas.records import StudyRecord, TrialOutcome, TrialStage
from hwnas.run import outcomes
from hwnas.storage import make_storage
from hwnas.testing.postgres import PostgresCluster
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE
from tests.search.test_search_e2e import HWNAS, hwnas

STUDY = "digits-test--dev0"  # <space>--<first device of the study's creator>


@pytest.fixture(scope="module")
def postgres():
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture()
def study_url(postgres, request):
    """A fresh database per test in the module's cluster."""
    name = "t" + str(abs(hash(request.node.name)) % 10 ** 8)
    subprocess.run(["runuser", "-u", postgres.user, "--"] * (os.geteuid() == 0) + [
        "createdb", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", postgres.user, name],
        check=True, capture_output=True, env=dict(os.environ, PATH=os.environ["PATH"] + ":" +
                                                  str(Path(_pg("createdb")).parent)))
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def _pg(name: str) -> str:
    from hwnas.testing.postgres import pg_bin

    return pg_bin(name)


def configs(tmp_path: Path, n_trials: int, finetune: str = "", sampler: str = "tpe"
            ) -> tuple[Path, list[Path]]:
    space = tmp_path / "space.yaml"
    text = DIGITS_SPACE + ENQUEUED.replace("n_trials: 5",
                                           f"n_trials: {n_trials}\n  sampler: {sampler}")
    if finetune:
        text = text.replace("max_steps: 60, max_seconds: 60", finetune)
    space.write_text(text)
    devices = []
    for index in range(3):  # each controller measures on its own (local) device, all alike
        path = tmp_path / f"dev{index}.yaml"
        path.write_text(FAST_DEVICE.replace("name: test-local", f"name: dev{index}\npool: cpu"))
        devices.append(path)
    return space, devices


def start(*args: object, folder: Path) -> subprocess.Popen:
    log = open(folder / f"{folder.name}.log", "w")
    return subprocess.Popen([HWNAS, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(condition, timeout: float = 600.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def record_of(url: str) -> StudyRecord | None:
    try:
        return StudyRecord.from_study(optuna.load_study(study_name=STUDY,
                                                        storage=make_storage(url)))
    except KeyError:
        return None


def primary_and_workers(tmp_path, url, n_workers, n_trials, finetune="", sampler="tpe"):
    space, devices = configs(tmp_path, n_trials, finetune, sampler)
    store = f"file://{tmp_path / 'shared-artifacts'}"
    folders = [tmp_path / f"c{i}" for i in range(n_workers + 1)]
    for folder in folders:
        folder.mkdir()
    primary = start("search", space, "--device", devices[0], "--storage", url, "--artifact-store",
                    store, "--run-dir", folders[0], "--no-progress", folder=folders[0])
    wait_for(lambda: (record_of(url) or StudyRecord((), "", 0.0, (), {})).parent_weights_sha256,
             what="the primary to fix the study's parent")
    workers = [start("worker", "--storage", url, "--study", STUDY, "--device", devices[i],
                     "--run-dir", folders[i], "--no-progress", folder=folders[i])
               for i in range(1, n_workers + 1)]
    return [primary, *workers], folders


def finish(processes, folders, timeout=1200) -> list[str]:
    logs = []
    for process, folder in zip(processes, folders):
        process.wait(timeout=timeout)
        logs.append((folder / f"{folder.name}.log").read_text())
    return logs


def never_measured_twice(found: list[TrialOutcome]) -> None:
    measured = [o for o in found if o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED)
                and o.copied_from is None]
    candidates = [o.candidate for o in measured]
    assert len(candidates) == len(set(candidates)), "a candidate was measured twice"


def test_two_engine_workers_join_with_one_parent_and_a_shared_store_and_never_tune_twice(
        tmp_path, study_url):
    """sampler: engine (the default policy) on one PostgreSQL study with two `hwnas worker`s:
    one parent for all (fetched by the workers, never trained by them), artifacts in a shared
    store, each proposal the engine's, each worker reading what the others finished from the
    study, and no two controllers fine-tune the same candidate. (The Optuna samplers with
    workers: the killed-worker and lost-database tests below, tpe.)"""
    processes, folders = primary_and_workers(tmp_path, study_url, n_workers=2, n_trials=8,
                                             finetune="max_steps: 30, max_seconds: 30",
                                             sampler="engine")
    logs = finish(processes, folders)
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(logs)[-4000:]
    study = optuna.load_study(study_name=STUDY, storage=make_storage(study_url))
    found, trials = outcomes(study), study.get_trials()
    assert sum(o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED) for o in found) >= 8
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    never_measured_twice(found)
    tuned = [o.candidate for o in found if o.finetune is not None and o.copied_from is None]
    assert tuned and len(tuned) == len(set(tuned)), "a candidate was fine-tuned twice"
    # each proposal is claimed in the study before its trial runs: two workers that propose
    # at the same instant step aside for each other instead of one copying the other's trial
    # (they ran in lock step: every proposal twice, in a fleet benchmark of 2026-12-07)
    copies = [(o.number, o.copied_from) for o in found if o.copied_from is not None]
    assert not copies, copies
    assert all(t.system_attrs.get("engine_claim") for t in trials
               if t.user_attrs.get("proposed_by") not in ("enqueued", None))
    controllers = {o.controller.rsplit(":", 1)[0] for o in found if o.controller}
    assert len(controllers) >= 2, "the workers ran no trial"
    proposed = [t.user_attrs.get("proposed_by") for t in trials]
    # the user's two enqueued candidates, then the engine's strategies: never the base sampler
    assert proposed.count("enqueued") >= 2 and "base_sampler" not in proposed, proposed
    assert {"ladder_start", "budget_exchange", "model_pool"} & set(proposed), proposed
    assert study.user_attrs["engine"]["policy"]["acquisition"] == "frontier"
    assert {o.device for o in found} >= {"dev0"} and len({o.device for o in found}) >= 2
    # one parent: fetched by the workers, never trained by them
    record = StudyRecord.from_study(study)
    for folder, log in zip(folders[1:], logs[1:]):
        assert (folder / "cache" / f"{record.parent_weights_sha256}.pt").exists()
        assert "training the base model" not in log
    # artifacts in the shared store: any machine exports any trial
    best = max((o for o in found if o.feasible), key=lambda o: o.values[0])
    hwnas("export", folders[2], "--trial", best.number, "--out", tmp_path / "exported")
    assert list((tmp_path / "exported").glob("*.onnx"))
    status = hwnas("status", study_url, "--study", STUDY)
    assert "best feasible so far: trial" in status and status.count("devices dev") >= 2


def test_a_worker_killed_mid_trial_is_retried_by_another_and_nothing_is_lost(tmp_path, study_url):
    processes, folders = primary_and_workers(
        tmp_path, study_url, n_workers=2, n_trials=7,
        finetune="max_steps: 100000, max_seconds: 6")
    study = optuna.load_study(study_name=STUDY, storage=make_storage(study_url))
    workers = {str(p.pid): p for p in processes[1:]}

    def victim_screened() -> TrialOutcome | None:
        """A trial some worker is fine-tuning: screened, not rejected, not yet trained.
        Whichever worker gets there first is the victim (under load one worker may start
        after the others have taken every trial)."""
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            outcome = TrialOutcome.from_trial(trial)
            if outcome.controller and outcome.controller.split(":")[1] in workers \
                    and outcome.screen_measurement is not None and outcome.finetune is None \
                    and outcome.rejection is None:
                return outcome
        return None

    wait_for(lambda: victim_screened() is not None
             or all(p.poll() is not None for p in processes[1:]),
             what="a worker to be fine-tuning")
    victim = victim_screened()
    assert victim is not None, "no worker reached fine-tuning"
    doomed = workers[victim.controller.split(":")[1]]
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its local agent
    logs = finish(processes, folders)
    survivors = [p for p in processes if p is not doomed]
    assert [p.returncode for p in survivors] == [0, 0], "\n".join(logs)[-4000:]
    found = outcomes(study)
    killed = found[victim.number]
    assert killed.stage == TrialStage.FAILED and "controller stopped" in killed.failure
    retry = next(o for o in found if o.origin == victim.number and o.number != victim.number)
    assert retry.stage in (TrialStage.EVALUATED, TrialStage.REJECTED)
    assert retry.screen_measurement == victim.screen_measurement  # reused, not measured again
    assert sum(o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED) for o in found) >= 7
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    never_measured_twice(found)


def test_a_lost_database_is_waited_out_and_no_trial_is_recorded_twice(tmp_path, postgres,
                                                                       study_url):
    processes, folders = primary_and_workers(tmp_path, study_url, n_workers=1, n_trials=5)
    study = optuna.load_study(study_name=STUDY, storage=make_storage(study_url))
    wait_for(lambda: len(study.get_trials(deepcopy=False)) >= 2, what="two trials to start")
    postgres.restart_after(6)  # the database crashes and comes back
    logs = finish(processes, folders)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(logs)[-4000:]
    found = outcomes(optuna.load_study(study_name=STUDY, storage=make_storage(study_url)))
    assert sum(o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED) for o in found) >= 5
    assert not [o for o in found if o.stage in (TrialStage.RUNNING, TrialStage.WAITING)]
    never_measured_twice(found)
    assert "database unreachable" in (folders[0] / "run.log").read_text() + \
        (folders[1] / "run.log").read_text()


def test_a_worker_refuses_other_weights_or_another_split(tmp_path):
    import dataclasses

    from hwnas.config.models import DatasetSpec
    from hwnas.data import load_task
    from hwnas.errors import ConfigError
    from hwnas.search.shared import check_same_parent

    task = load_task(DatasetSpec(builtin="digits", validation_fraction=0.15))
    other_split = load_task(DatasetSpec(builtin="digits", validation_fraction=0.2))
    study = optuna.create_study(study_name="s")
    record = StudyRecord((), "key", 0.9, (), {}, parent_weights_sha256="a" * 64,
                         data_fingerprint=task.fingerprint)
    check_same_parent(study, record, "a" * 64, task)  # the same: fine
    with pytest.raises(ConfigError, match="parent weights .* are not the study's"):
        check_same_parent(study, record, "b" * 64, task)
    with pytest.raises(ConfigError, match="data split differs from the study's"):
        check_same_parent(study, record, "a" * 64, other_split)
    assert dataclasses.replace(record, data_fingerprint=None)  # an old study: no split recorded


def test_another_search_space_cannot_join_a_study(tmp_path, study_url):
    processes, folders = primary_and_workers(tmp_path, study_url, n_workers=0, n_trials=2)
    finish(processes, folders)
    space, devices = configs(tmp_path, 2)
    space.write_text(space.read_text().replace("validation_fraction: 0.15",
                                               "validation_fraction: 0.2"))
    done = subprocess.run([HWNAS, "search", str(space), "--device", str(devices[1]), "--storage",
                           study_url, "--study", STUDY, "--run-dir", str(tmp_path / "other"),
                           "--trials", "3"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "dataset.validation_fraction: 0.15 -> 0.2" in done.stderr
    assert "hwnas worker" in done.stderr
