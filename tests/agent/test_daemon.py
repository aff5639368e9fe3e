"""A daemon that survives: crashes, hangs, restarts, a full queue, a full store, fuzz."""

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
from hwnas_agent.protocol import MeasureRequest

from hwnas.errors import MeasurementError
from hwnas.records import Artifact
from hwnas.remote.local import LocalAgentProcess


def start(tmp_path, *extra, state="state"):
    process = LocalAgentProcess(tmp_path / state, extra_args=tuple(extra))
    process.start()
    return process, process.client("daemon-test")


def long_request(sha, **overrides):
    values = dict(model_sha256=sha, warmup_seconds=0.0, min_seconds=60.0, min_iterations=1,
                  rounds=1, timeout_s=120.0)
    values.update(overrides)
    return MeasureRequest(**values)


def wait_state(client, job_id, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.job(job_id)
        if record["state"] == state:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {state}: {client.job(job_id)}")


def worker_pid(job_id, timeout=10.0):
    """The job's worker process (it starts just after the job turns 'running')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"hwnas_agent.worker" in cmdline and any(job_id.encode() in c for c in cmdline):
                    return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("no worker process for job " + job_id)


@pytest.fixture()
def small(models_dir):
    return Artifact.from_file(models_dir / "small.onnx", {}, 0)


def test_a_crashing_runtime_fails_the_job_and_the_agent_keeps_serving(tmp_path, small):
    process, client = start(tmp_path)
    try:
        client.ensure_model(small)
        job_id = client.submit(long_request(small.sha256))
        wait_state(client, job_id, "running")
        pid = worker_pid(job_id)
        time.sleep(1.0)  # inside the timed loop
        os.kill(pid, signal.SIGSEGV)  # what a native library fault delivers
        record = wait_state(client, job_id, "failed")
        assert "crashed (SIGSEGV)" in record["error"]
        quick = client.measure(long_request(small.sha256, min_seconds=0.05, min_iterations=10))
        assert quick.iterations >= 10
    finally:
        process.stop()


def test_a_hanging_job_is_stopped_at_its_timeout(tmp_path, small):
    process, client = start(tmp_path)
    try:
        client.ensure_model(small)
        with pytest.raises(MeasurementError, match=r"timed out after 2 s"):
            client.measure(long_request(small.sha256, timeout_s=2.0))
        client.hello()
    finally:
        process.stop()


def test_a_job_cut_short_by_an_agent_crash_is_reported_interrupted(tmp_path, small):
    process, client = start(tmp_path)
    client.ensure_model(small)
    finished = client.submit(long_request(small.sha256, min_seconds=0.05, min_iterations=5))
    wait_state(client, finished, "done")
    job_id = client.submit(long_request(small.sha256))
    wait_state(client, job_id, "running")
    worker = worker_pid(job_id)
    process.process.send_signal(signal.SIGKILL)  # no clean shutdown
    process.process.wait()
    os.kill(worker, signal.SIGKILL)
    process.stop()
    again, client = start(tmp_path)
    try:
        record = client.job(job_id)
        assert record["state"] == "interrupted" and "stopped while this job was running" in record["error"]
        assert client.job(finished)["state"] == "done"  # a finished result is never lost
    finally:
        again.stop()


def test_the_queue_is_bounded(tmp_path, small):
    process, client = start(tmp_path, "--max-queue", "1")
    try:
        client.ensure_model(small)
        running = client.submit(long_request(small.sha256))
        wait_state(client, running, "running")
        client.submit(long_request(small.sha256))  # waits in the queue
        with pytest.raises(MeasurementError, match="queue_full"):
            client.submit(long_request(small.sha256))
        client.hello()
    finally:
        process.stop()


def test_model_store_evicts_least_recently_used(tmp_path, models_dir):
    artifacts = {n: Artifact.from_file(models_dir / f"{n}.onnx", {}, 0)
                 for n in ("small", "medium", "large")}
    sizes = {n: a.size_bytes for n, a in artifacts.items()}
    cap_mb = (sizes["small"] + sizes["large"] + sizes["medium"] / 2) / 1e6
    process, client = start(tmp_path, "--max-store-mb", str(cap_mb))
    try:
        client.ensure_model(artifacts["small"])
        time.sleep(0.02)
        client.ensure_model(artifacts["medium"])
        time.sleep(0.02)
        assert client.has_model(artifacts["small"].sha256)  # used: now more recent than medium
        time.sleep(0.02)
        client.ensure_model(artifacts["large"])
        assert client.has_model(artifacts["large"].sha256)
        assert client.has_model(artifacts["small"].sha256)
        assert not client.has_model(artifacts["medium"].sha256)
    finally:
        process.stop()


def _garbage(rng: random.Random, port: int) -> bytes:
    valid = (b"PUT /v1/models/" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
             + b"\x08\x01" * 10)
    choices = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))),
        lambda: valid[:rng.randint(1, len(valid))],
        lambda: (rng.choice([b"GET", b"POST", b"PUT", b"BREW", b"\xff"]) + b" /v1/" +
                 rng.choice([b"jobs", b"models/zz", b"hello", b"jobs/../../etc", b"%00"]) +
                 b" HTTP/1.1\r\nContent-Length: " + str(rng.randint(-5, 99)).encode() +
                 b"\r\n\r\n" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 99)))),
        lambda: b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 30\r\n\r\n" +
                rng.choice([b'{"model_sha256": 5}', b"[1,2,3]", b'{"a":' * 5, b"null", b'"x"']),
        lambda: b"GET /v1/hello HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    ]
    return rng.choice(choices)()


def test_fuzzed_and_truncated_requests_never_take_the_agent_down(tmp_path, small):
    process, client = start(tmp_path)
    rng = random.Random(20261121)
    try:
        deadline = time.monotonic() + 20  # bounded in count and time; loopback only
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            try:
                with socket.create_connection(("127.0.0.1", process.port), timeout=2) as sock:
                    sock.sendall(_garbage(rng, process.port))
                    sock.shutdown(socket.SHUT_WR)
                    sock.recv(1024)
            except OSError:
                pass
        assert client.hello()["agent"] == "hwnas-agent"
        client.ensure_model(small)
        measured = client.measure(long_request(small.sha256, min_seconds=0.05, min_iterations=10))
        assert measured.iterations >= 10
    finally:
        process.stop()
