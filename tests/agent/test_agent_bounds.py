"""The agent's resources are bounded as a whole (issue 25, item 5): the memory limit holds for
all its workers together. Real agent processes, real workers, 127.0.0.1 only."""

import json
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
