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


# --- no orphans ---------------------------------------------------------------------------------


def alive(pid):
    """A live process (not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def test_a_worker_dies_with_its_agent_under_kill_9(tmp_path, small):
    process, client = start(tmp_path)
    client.ensure_model(small)
    job_id = client.submit(long_request(small.sha256))
    wait_state(client, job_id, "running")
    worker = worker_pid(job_id)
    process.process.send_signal(signal.SIGKILL)
    process.process.wait()
    assert wait_gone(worker), "the measure worker outlived its agent"
    process.stop()


def test_a_restarted_agent_kills_a_leftover_worker_before_the_next_job(tmp_path, small):
    """A worker that survived its agent (a kernel without the parent-death signal, say) is
    killed by the next agent before anything else runs: never two measurements at once."""
    import json
    import subprocess
    import sys

    process, client = start(tmp_path)
    client.ensure_model(small)
    job_id = client.submit(long_request(small.sha256))
    wait_state(client, job_id, "running")
    process.process.send_signal(signal.SIGKILL)
    process.process.wait()
    process.stop()
    job_dir = tmp_path / "state" / "jobs" / job_id
    # the survivor: the same worker command, without any lifeline to the dead agent
    survivor = subprocess.Popen([sys.executable, "-m", "hwnas_agent.worker", "measure", str(job_dir),
                                 str(tmp_path / "state" / "models" / f"{small.sha256}.onnx")],
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    from hwnas_agent.lifeline import start_ticks

    (job_dir / "worker.json").write_text(json.dumps({"pid": survivor.pid,
                                                     "start_ticks": start_ticks(survivor.pid)}))
    again, client = start(tmp_path)
    try:
        assert survivor.poll() == -signal.SIGKILL  # gone before the agent said it listens
        record = client.job(job_id)
        assert record["state"] == "interrupted" and record["leftover_worker"] == "killed"
        assert not (job_dir / "result.json").exists()
        quick = client.measure(long_request(small.sha256, min_seconds=0.05, min_iterations=5))
        assert quick.iterations >= 5
    finally:
        again.stop()
        survivor.wait()


def test_a_stale_pid_record_never_kills_an_unrelated_process(tmp_path):
    import subprocess

    from hwnas_agent.lifeline import kill_group_if_same, start_ticks

    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ticks = start_ticks(bystander.pid)
        assert kill_group_if_same(bystander.pid, ticks - 1) == "gone"  # same pid, another start
        assert bystander.poll() is None
        assert kill_group_if_same(bystander.pid, ticks) == "killed"
    finally:
        bystander.kill()
        bystander.wait()


CONTROLLER = """
import sys, threading, time
from hwnas.remote.local import LocalAgentProcess
from hwnas_agent.protocol import MeasureRequest
from hwnas.records import Artifact
from pathlib import Path

agent = LocalAgentProcess(Path(sys.argv[1]))
if sys.argv[2] == "thread":  # started from a thread that ends at once: the pipe lease holds
    t = threading.Thread(target=agent.start); t.start(); t.join()
else:
    agent.start()
client = agent.client("c")
artifact = Artifact.from_file(Path(sys.argv[3]), {}, 0)
client.ensure_model(artifact)
job = client.submit(MeasureRequest(model_sha256=artifact.sha256, warmup_seconds=0.0,
                                   min_seconds=60.0, min_iterations=1, rounds=1))
while client.job(job)["state"] != "running":
    time.sleep(0.05)
print(agent.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_the_local_agent_and_its_worker_die_with_the_controller(tmp_path, small, models_dir,
                                                                 started_from):
    import subprocess
    import sys

    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path / "state"),
                                   started_from, str(models_dir / "small.onnx")],
                                  stdout=subprocess.PIPE, text=True)
    try:
        agent = int(controller.stdout.readline())
        job_id = next((tmp_path / "state" / "jobs").iterdir()).name
        worker = worker_pid(job_id)
        controller.kill()  # SIGKILL: no cleanup code runs in the controller
        controller.wait()
        assert wait_gone(agent, 15), "the local agent outlived its controller"
        assert wait_gone(worker, 5), "the measure worker outlived the agent"
    finally:
        controller.kill()
        controller.wait()


# --- bounded --------------------------------------------------------------------------------------


def constant_of_shape_onnx(path, elements=1_100_000_000):
    """About 100 bytes that ask for a 4.4 GB float tensor at run time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([elements], dtype=np.int64), "shape")
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"],
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([node], "bomb", [], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_over_the_worker_memory_limit_fails_its_job_with_that_reason(tmp_path, small):
    bomb = Artifact.from_file(constant_of_shape_onnx(tmp_path / "bomb.onnx"), {}, 0)
    assert bomb.size_bytes < 200
    process = LocalAgentProcess(tmp_path / "state", worker_memory_mb=1000)
    process.start()
    client = process.client("limited")
    try:
        assert client.hello()["worker_memory_mb"] == 1000
        client.ensure_model(bomb)
        with pytest.raises(MeasurementError, match=r"MemoryLimitExceeded: the model needs more "
                                                   r"memory than the worker's limit of 1000 MB"):
            client.measure(long_request(bomb.sha256, min_seconds=0.05))
        client.ensure_model(small)  # the agent and its next job are unharmed
        assert client.measure(long_request(small.sha256, min_seconds=0.05)).iterations >= 1
    finally:
        process.stop()


def test_the_default_worker_memory_limit_is_half_the_ram(local_agent):
    from hwnas_agent.facts import memory_total_mb

    client, _ = local_agent
    assert client.hello()["worker_memory_mb"] == pytest.approx(memory_total_mb() / 2, rel=1e-3)


def vm_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


def test_uploads_are_streamed_and_load_checked_one_at_a_time(tmp_path):
    """Four 40 MB uploads at once: the agent's peak memory grows by far less than one body,
    and never two load checks run together."""
    import threading

    from hwnas.testing.models import matmul_onnx

    process, client = start(tmp_path)
    artifacts = [Artifact.from_file(matmul_onnx(tmp_path / f"m{i}.onnx", 40, seed=i), {}, 0)
                 for i in range(4)]
    client.hello()
    before = vm_hwm_mb(process.process.pid)
    inspecting, stop = [], threading.Event()
    mine = str(tmp_path / "state" / "models").encode()  # other agents may run on this machine

    def watch():
        while not stop.is_set():
            inspecting.append(sum(1 for entry in Path("/proc").iterdir() if entry.name.isdigit()
                                  and b"\0inspect\0" + mine in _cmdline(entry)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        uploads = [threading.Thread(target=process.client(f"u{i}").ensure_model, args=(a,))
                   for i, a in enumerate(artifacts)]
        for upload in uploads:
            upload.start()
        for upload in uploads:
            upload.join()
    finally:
        stop.set()
        watcher.join()
    try:
        assert all(client.has_model(a.sha256) for a in artifacts)
        assert max(inspecting) == 1
        assert vm_hwm_mb(process.process.pid) - before < 25  # one body is 40 MB
    finally:
        process.stop()


def _cmdline(entry):
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def test_stale_uploads_are_removed_at_start_and_uploads_count_against_the_cap(tmp_path, small):
    models = tmp_path / "state" / "models"
    models.mkdir(parents=True)
    stale = models / ".upload-left-by-a-kill.onnx"
    stale.write_bytes(b"\0" * 3_000_000)
    process, client = start(tmp_path, "--max-store-mb", "1")
    try:
        assert not stale.exists()
        client.ensure_model(small)
        big = 2_000_000  # more than the whole store may hold: refused before a byte is stored
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            sock.sendall(b"PUT /v1/models/" + b"d" * 64 + b" HTTP/1.1\r\nHost: x\r\n"
                         + f"Authorization: Bearer {process.token}\r\n".encode()
                         + f"Content-Length: {big}\r\n\r\n".encode())
            assert b" 413 " in sock.recv(4096).split(b"\r\n")[0]
        assert not list(models.glob(".upload-*"))
    finally:
        process.stop()


def test_slow_connections_cannot_starve_the_agent_under_a_1024_file_limit(tmp_path, small):
    """1,000 connections that send headers a byte at a time (slow loris), against an agent
    started with 1,024 files at most: the agent keeps its own connections bounded and its
    controller is served at once."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        process, client = start(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    slow = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=5)
            sock.sendall(b"GET /v1/hello HTTP/1.1\r\nX-Slow: ")
            slow.append(sock)
        started = time.monotonic()
        assert client.hello()["agent"] == "hwnas-agent"
        client.ensure_model(small)
        assert client.measure(long_request(small.sha256, min_seconds=0.05)).iterations >= 1
        assert time.monotonic() - started < 10
        open_files = len(list(Path(f"/proc/{process.process.pid}/fd").iterdir()))
        assert open_files < 64 + 40  # the connection cap, plus the agent's own files
    finally:
        for sock in slow:
            sock.close()
        process.stop()


def test_a_device_shared_by_two_controllers_measures_one_job_at_a_time(tmp_path, small):
    """Two workers of one study on one device (issue 13): the agent's queue runs one job at a
    time, and the second job's wait is recorded as queueing, never counted as latency."""
    import threading

    process, _ = start(tmp_path)
    try:
        records = {}
        both_ready = threading.Barrier(2, timeout=120)

        def controller(name):
            client = process.client(name)  # each controller has its own connection
            client.ensure_model(small)
            both_ready.wait()  # submitted together: one of them must queue
            job_id = client.submit(MeasureRequest(model_sha256=small.sha256, warmup_seconds=0.05,
                                                  min_seconds=1.5, min_iterations=20, rounds=1))
            records[name] = client.wait(job_id, 120)

        threads = [threading.Thread(target=controller, args=(f"worker-{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first, second = sorted(records.values(), key=lambda r: r["started_unix_time"])
        assert first["state"] == second["state"] == "done"
        # never two at once: the second starts after the first has finished
        first_end = first["started_unix_time"] + first["job_wall_seconds"]
        assert second["started_unix_time"] >= first_end - 0.01
        # it waited for the first job (whose timed phase alone is 1.5 s), and that wait is
        # recorded apart ...
        assert second["queued_seconds"] >= 1.0 > first["queued_seconds"]
        # ... and is in no latency figure: each timed phase is its own ~1.5 s of inference
        for record in (first, second):
            measured = record["measurement"]
            assert measured["latency_ms"]["max"] < 1000 * record["queued_seconds"] or \
                record is first
            assert measured["latency_ms"]["p50"] < 100
        ratio = second["measurement"]["latency_ms"]["p50"] / first["measurement"]["latency_ms"]["p50"]
        assert 0.2 < ratio < 5
    finally:
        process.stop()
