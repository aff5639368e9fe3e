"""The agent's resources are bounded as a whole (issue 25, item 5): the memory limit holds for
all its workers together, one client's long-polls cannot take every connection (hello and
facts always answer), and job folders are a bounded history that never loses a result the
controller has not fetched. Real agent processes, real workers, 127.0.0.1 only."""

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hwnas_agent.protocol import MeasureRequest

from hwnas.records import Artifact
from hwnas.remote.local import LocalAgentProcess


def start(tmp_path, *extra, state="state", **options):
    process = LocalAgentProcess(tmp_path / state, extra_args=tuple(extra), **options)
    process.start()
    return process, process.client("bounds-test")


def request(sha, seconds, **overrides):
    values = dict(model_sha256=sha, warmup_seconds=0.0, min_seconds=seconds, min_iterations=1,
                  rounds=1, timeout_s=120.0)
    values.update(overrides)
    return MeasureRequest(**values)


def wait_on_disk(state_dir, job_id, states=("done",), timeout=60.0):
    """The job's state as the agent wrote it, read without asking the agent (no fetch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads((state_dir / "jobs" / job_id / "state.json").read_text())
            if record["state"] in states:
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}")


@pytest.fixture()
def small(models_dir):
    return Artifact.from_file(models_dir / "small.onnx", {}, 0)


# -- memory: one limit for all workers together ---------------------------------------------


def workers_of(agent_pid):
    """(pid, VmRSS in MB) of every live worker process the agent started."""
    marker = f"--parent-pid\0{agent_pid}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"hwnas_agent.worker" not in cmdline or marker not in cmdline:
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        rss = [int(line.split()[1]) / 1024 for line in status.splitlines()
               if line.startswith("VmRSS:")]
        if rss:  # a zombie has no VmRSS
            found.append((int(entry.name), rss[0]))
    return found


def test_a_measure_and_a_load_check_together_stay_under_the_one_memory_limit(tmp_path):
    """A 150 MB model measured while another 150 MB model is uploaded (its load check is a
    second worker): each worker alone peaks near 360 MB, two at once would pass 500 MB. The
    limit (500 MB) holds for all workers together, sampled every 5 ms, and the load check
    never runs beside the timed phase."""
    from hwnas.testing.models import matmul_onnx

    limit_mb = 500
    first = Artifact.from_file(matmul_onnx(tmp_path / "first.onnx", 150, seed=1), {}, 0)
    second = Artifact.from_file(matmul_onnx(tmp_path / "second.onnx", 150, seed=2), {}, 0)
    process, client = start(tmp_path, worker_memory_mb=limit_mb)
    samples, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            rows = workers_of(process.process.pid)
            samples.append((len(rows), sum(rss for _, rss in rows)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    try:
        assert client.hello()["worker_memory_mb"] == limit_mb
        client.ensure_model(first)
        watcher.start()
        job_id = client.submit(request(first.sha256, 4.0))
        wait_on_disk(tmp_path / "state", job_id, ("running",))
        time.sleep(1.5)  # the session is loaded: the timed phase runs
        upload = threading.Thread(target=process.client("uploader").ensure_model, args=(second,))
        upload.start()
        upload.join(timeout=120)
        record = client.wait(job_id, 120)
        stop.set()
        watcher.join()
        assert record["state"] == "done" and client.has_model(second.sha256)
        assert max(rss for _, rss in samples) > 150  # the workers did hold the models
        assert max(rss for _, rss in samples) < limit_mb
        assert max(count for count, _ in samples) == 1
        # the load check waited for the measurement to end
        stored = client._call("GET", f"/v1/models/{second.sha256}").json()
        job_end = record["started_unix_time"] + record["job_wall_seconds"]
        assert stored["stored_unix_time"] >= job_end
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        process.stop()


def test_the_memory_error_names_the_shared_limit_and_its_key(tmp_path):
    from tests.agent.test_daemon import constant_of_shape_onnx

    from hwnas.errors import MeasurementError

    bomb = Artifact.from_file(constant_of_shape_onnx(tmp_path / "bomb.onnx"), {}, 0)
    process, client = start(tmp_path, worker_memory_mb=600)
    try:
        client.ensure_model(bomb)
        with pytest.raises(MeasurementError, match=r"limit of 600 MB \(worker_memory_mb in the "
                                                   r"agent configuration: the memory all the "
                                                   r"agent's workers share"):
            client.measure(request(bomb.sha256, 0.05))
    finally:
        process.stop()


# -- connections: long-polls are bounded, hello and facts always answer ---------------------


def raw_get(port, token, path, timeout=45.0):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_long_poll_flood_leaves_hello_facts_and_other_waits_served(tmp_path, small):
    """70 long-polls (wait=30) on one running job from one token holder: the agent holds a few
    and answers the others at once with the job's state (a wait is a maximum); another
    controller's long-poll on its own job is still held, and a third client's hello and facts
    answer at once."""
    process, client = start(tmp_path)
    threads, answers = [], []
    try:
        client.ensure_model(small)
        flooded = client.submit(request(small.sha256, 60.0))
        queued = client.submit(request(small.sha256, 0.05))
        wait_on_disk(tmp_path / "state", flooded, ("running",))

        def poll():
            try:
                answers.append(raw_get(process.port, process.token, f"/v1/jobs/{flooded}?wait=30"))
            except (OSError, http.client.HTTPException) as exc:
                answers.append((None, repr(exc)))

        threads = [threading.Thread(target=poll, daemon=True) for _ in range(70)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while len(answers) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        hello = process.client("third").hello()
        facts = process.client("third").facts()
        answered_in = time.monotonic() - started
        assert hello["agent"] == "hwnas-agent" and facts
        assert answered_in < 2.0
        at_once = [body for status, body in answers if status == 200]
        assert len(answers) >= 60 and len(at_once) == len(answers)  # no refusal, no 5xx
        assert all(body["state"] == "running" and "cut short" in body["wait"] for body in at_once)
        # another controller's wait on its own (queued) job is held, not cut
        started = time.monotonic()
        record = process.client("second").job(queued, wait_s=1.0)
        assert record["state"] == "queued" and "wait" not in record
        assert time.monotonic() - started >= 0.9
    finally:
        process.stop()  # ends the long-polls it still holds
        for thread in threads:
            thread.join(timeout=10)


def test_hello_and_facts_answer_when_every_connection_is_held(tmp_path):
    """8 connections (the cap) held by authenticated uploads whose bodies do not come: hello
    and facts are still answered, on a reserve that serves them alone; anything else there is
    refused at once with the reason."""
    process, client = start(tmp_path, "--max-connections", "8")
    held = []
    try:
        for index in range(8):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=10)
            sock.sendall(f"PUT /v1/models/{index:064x} HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {process.token}\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode())
            held.append(sock)
        time.sleep(0.5)  # every one past the token check, reading its body
        started = time.monotonic()
        assert process.client("other").hello()["agent"] == "hwnas-agent"
        assert process.client("other").facts()
        assert time.monotonic() - started < 2.0
        status, body = raw_get(process.port, process.token, "/v1/jobs/" + "0" * 32, timeout=10)
        assert status == 503 and "max_connections" in body["error"]["message"]
    finally:
        for sock in held:
            sock.close()
        process.stop()


# -- job folders: a bounded history that never loses an unfetched result --------------------


def job_folders(state_dir):
    return sorted(p.name for p in (state_dir / "jobs").iterdir() if not p.name.startswith("."))


def wait_folders(state_dir, expected, timeout=30.0):
    deadline = time.monotonic() + timeout
    while job_folders(state_dir) != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_folders(state_dir) == sorted(expected)


def test_job_history_keeps_a_count_and_never_an_unfetched_result_is_removed(tmp_path, small):
    state = tmp_path / "state"
    process, client = start(tmp_path, "--max-job-history", "2")
    try:
        client.ensure_model(small)
        unfetched = client.submit(request(small.sha256, 0.05))
        wait_on_disk(state, unfetched)
        fetched = []
        for _ in range(3):
            job_id = client.submit(request(small.sha256, 0.05))
            client.wait(job_id, 60)  # the controller fetches the result
            fetched.append(job_id)
        # two finished jobs kept: the unfetched one (the oldest) and the newest
        wait_folders(state, [unfetched, fetched[2]])
        status, body = raw_get(process.port, process.token, f"/v1/jobs/{fetched[0]}")
        assert status == 404 and "max_job_history" in body["error"]["message"]
        # what was fetched is recorded on disk: after a restart the next job's end removes
        # the last one fetched before the restart, never the unfetched one
        process.restart()
        client = process.client("bounds-test")
        newest = client.submit(request(small.sha256, 0.05))
        wait_on_disk(state, newest)
        wait_folders(state, [unfetched, newest])
        record = client.job(unfetched)
        assert record["state"] == "done" and record["measurement"]["iterations"] >= 1
    finally:
        process.stop()


def test_fetched_jobs_older_than_the_history_age_are_removed_at_start(tmp_path, small):
    state = tmp_path / "state"
    process, client = start(tmp_path)
    client.ensure_model(small)
    unfetched = client.submit(request(small.sha256, 0.05))
    wait_on_disk(state, unfetched)
    fetched = client.submit(request(small.sha256, 0.05))
    client.wait(fetched, 60)
    process.stop()
    assert job_folders(state) == sorted([unfetched, fetched])
    time.sleep(1.0)
    process, client = start(tmp_path, "--job-history-days", "0.00001")  # 0.86 s
    try:
        assert job_folders(state) == [unfetched]
        assert client.job(unfetched)["state"] == "done"
    finally:
        process.stop()


def test_history_settings_are_validated():
    from hwnas_agent.config import AgentConfig, AgentConfigError

    assert AgentConfig().max_job_history == 500 and AgentConfig().job_history_days == 7.0
    with pytest.raises(AgentConfigError, match="max_job_history"):
        AgentConfig.from_dict({"max_job_history": 0})
    with pytest.raises(AgentConfigError, match="job_history_days"):
        AgentConfig.from_dict({"job_history_days": -1})
