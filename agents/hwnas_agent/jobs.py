"""The job side of the agent: the queue, one measure worker at a time, model reference counts.

A job is held in memory with its request (and so its model's sha256) from the moment it is
accepted; its folder on disk (storage.JobStore) is what survives a restart.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, Optional, Tuple

from hwnas_agent.protocol import FINISHED_STATES, MeasureRequest, ProtocolError
from hwnas_agent.storage import JobStore, ModelStore, read_json, sha256_hex

INSPECT_TIMEOUT_S = 120.0


class Job:
    """An accepted job: its id and its validated request (never re-read from disk)."""

    __slots__ = ("job_id", "request")

    def __init__(self, job_id: str, request: MeasureRequest) -> None:
        self.job_id = job_id
        self.request = request

    @property
    def model_sha256(self) -> str:
        return self.request.model_sha256


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return "signal %d" % -returncode


class Agent:
    """Model store, persisted jobs and the single measuring thread."""

    def __init__(self, state_dir: str, max_queue: int = 16, python: str = sys.executable,
                 max_store_bytes: Optional[int] = None) -> None:
        self.state_dir = state_dir
        self.models = ModelStore(os.path.join(state_dir, "models"), max_store_bytes)
        self.jobs = JobStore(os.path.join(state_dir, "jobs"))
        self.python = python
        self._in_use: Dict[str, int] = {}  # sha256 -> queued or running jobs using it
        self._queue: "queue.Queue[Job]" = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()  # the queue's admission and the reference counts
        self._current: Optional[subprocess.Popen] = None
        self._stopping = threading.Event()
        self._finished = threading.Condition()  # notified whenever a job finishes
        self._recover()
        self._thread = threading.Thread(target=self._run_jobs, name="measure", daemon=True)
        self._thread.start()

    # -- jobs ---------------------------------------------------------------
    def _recover(self) -> None:
        """A restart never loses a finished result; a job cut short says so."""
        for job_id in self.jobs.all_ids():
            record = self.jobs.get(job_id) or {}
            if record.get("state") == "running":
                self.jobs.set_state(job_id, "interrupted",
                                    error="the agent stopped while this job was running")
            elif record.get("state") == "queued":
                try:
                    job = Job(job_id, MeasureRequest.from_dict(self.jobs.request(job_id)))
                except ProtocolError as exc:
                    self.jobs.set_state(job_id, "failed", error="unreadable request: %s" % exc)
                    continue
                try:
                    self._queue.put_nowait(job)
                    self._use(job.model_sha256, +1)
                except queue.Full:
                    self.jobs.set_state(job_id, "failed", error="queue full when the agent restarted")

    def submit(self, payload: Any) -> Dict[str, Any]:
        request = MeasureRequest.from_dict(payload)
        if self.models.meta(request.model_sha256) is None:
            raise ProtocolError(404, "unknown_model", "model %s is not stored here; upload it "
                                "first with PUT /v1/models/%s" % (request.model_sha256,
                                                                  request.model_sha256))
        with self._lock:
            if self._queue.full():
                raise ProtocolError(503, "queue_full", "%d jobs already queued; retry later"
                                    % self._queue.maxsize)
            job = Job(uuid.uuid4().hex, request)
            record = self.jobs.create(job.job_id, request.to_dict())
            self._use(job.model_sha256, +1)
            self.models.touch(job.model_sha256)
            self._queue.put_nowait(job)
        return record

    def _use(self, sha256: str, delta: int) -> None:
        count = self._in_use.get(sha256, 0) + delta
        if count > 0:
            self._in_use[sha256] = count
        else:
            self._in_use.pop(sha256, None)

    def job(self, job_id: str, wait_s: float = 0.0) -> Dict[str, Any]:
        """The job's record; with ``wait_s``, held until it finishes or the time is up, so that
        a client waits without polling (nothing disturbs the measurement under way)."""
        record = self.jobs.get(job_id) if job_id.isalnum() else None
        if record is None:
            raise ProtocolError(404, "unknown_job", "no job %r on this agent" % job_id)
        deadline = time.monotonic() + wait_s
        with self._finished:
            while record["state"] not in FINISHED_STATES and time.monotonic() < deadline:
                self._finished.wait(timeout=max(0.0, deadline - time.monotonic()))
                record = self.jobs.get(job_id) or record
        return record

    def _run_jobs(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._execute(job)
            except Exception as exc:  # a job fails; the agent keeps serving
                self.jobs.set_state(job.job_id, "failed", error="agent error: %s" % exc)
            finally:
                with self._lock:
                    self._use(job.model_sha256, -1)
                with self._finished:
                    self._finished.notify_all()

    def _execute(self, job: Job) -> None:
        job_dir = self.jobs.job_dir(job.job_id)
        started = time.time()
        self.jobs.set_state(job.job_id, "running", started_unix_time=started)
        command = [self.python, "-m", "hwnas_agent.worker", "measure", job_dir,
                   self.models.path(job.model_sha256)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self._current = process
        try:
            _, stderr = process.communicate(timeout=job.request.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            self.jobs.set_state(job.job_id, "failed", started_unix_time=started,
                                error="timed out after %.0f s (timeout_s)" % job.request.timeout_s)
            return
        finally:
            self._current = None
        wall = time.time() - started
        if self._stopping.is_set():
            self.jobs.set_state(job.job_id, "interrupted",
                                error="the agent was stopped during the job")
        elif process.returncode == 0 and os.path.exists(os.path.join(job_dir, "result.json")):
            self.jobs.set_state(job.job_id, "done", started_unix_time=started,
                                job_wall_seconds=wall)
        elif process.returncode < 0:
            tail = stderr.decode("utf-8", "replace")[-2000:]
            self.jobs.set_state(job.job_id, "failed", started_unix_time=started,
                                error="the runtime crashed (%s); stderr: %s"
                                % (signal_name(process.returncode), tail))
        else:
            error = (read_json(os.path.join(job_dir, "error.json")) or {}).get("error", {})
            message = error.get("message") or stderr.decode("utf-8", "replace")[-2000:]
            self.jobs.set_state(job.job_id, "failed", started_unix_time=started,
                                error="%s: %s" % (error.get("type", "worker"), message))

    # -- models -------------------------------------------------------------
    def put_model(self, sha256: str, data: bytes) -> Tuple[int, Dict[str, Any]]:
        actual = sha256_hex(data)
        if actual != sha256:
            raise ProtocolError(422, "sha256_mismatch", "the body hashes to %s but the URL names "
                                "%s; nothing was stored" % (actual, sha256))
        existing = self.models.meta(sha256)
        if existing is not None:
            return 200, existing
        tmp = self.models.stage(data)
        try:
            signature = self._inspect(tmp)
            meta = self.models.commit(tmp, sha256, signature)
            with self._lock:
                meta["evicted"] = self.models.evict(set(self._in_use) | {sha256})
            return 201, meta
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _inspect(self, path: str) -> Dict[str, Any]:
        """Load the model once in a separate process: corrupt bytes cannot crash the agent."""
        try:
            done = subprocess.run([self.python, "-m", "hwnas_agent.worker", "inspect", path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=INSPECT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ProtocolError(422, "invalid_model", "loading the model took over %.0f s"
                                % INSPECT_TIMEOUT_S)
        try:
            payload = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            payload = None
        if done.returncode == 0 and isinstance(payload, dict) and "inputs" in payload:
            return payload
        if isinstance(payload, dict) and "error" in payload:
            message = payload["error"].get("message", "")
        elif done.returncode < 0:
            message = "onnxruntime crashed (%s) loading it" % signal_name(done.returncode)
        else:
            message = done.stderr.decode("utf-8", "replace")[-1000:]
        raise ProtocolError(422, "invalid_model", "not a loadable ONNX model: %s" % message.strip())

    def stop(self) -> None:
        self._stopping.set()
        current = self._current
        if current is not None and current.poll() is None:
            os.killpg(current.pid, signal.SIGKILL)
        self._thread.join(timeout=10)
