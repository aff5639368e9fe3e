"""The job side of the agent: the queue, one worker at a time, model reference counts.

A job is held in memory with its request (and so its model's sha256) from the moment it is
accepted; its folder on disk (storage.JobStore) is what survives a restart. Workers run in
their own process group under a memory limit and die with the agent (lifeline.py); each
records its pid and start time, so that a restarted agent kills a worker left over from an
interrupted job before it starts the next one: one measurement at a time, always.

One worker process at a time, measure or load check (workers.WorkerSlot): the memory limit
then holds for all of them together, and no load check ever runs beside a timed phase.
Uploads go through intake.py, which shares the reference counts: a model a queued or running
job needs is never evicted.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from hwnas_agent import facts, lifeline
from hwnas_agent.config import AgentConfig, PowerSourceConfig
from hwnas_agent.intake import ModelIntake
from hwnas_agent.protocol import FINISHED_STATES, NO_POWER, JobState, MeasureRequest, ProtocolError
from hwnas_agent.storage import JobStore, ModelStore, read_json
from hwnas_agent.workers import Workers, WorkerSlot, reap_group, signal_name, tail

# long-polls held at once: on one job, and in all (a share of max_connections), so that waits
# never take the connections hello, facts and the other controllers need; a wait over the
# bound is answered at once with the job's state (a wait is a maximum, never a promise).
# Clients cannot be told apart (one shared token, and every controller arrives from
# 127.0.0.1 through SSH): the job waited on is what separates one controller's waits.
MAX_WAITS_PER_JOB = 4
WAITS_SHARE_OF_CONNECTIONS = 4  # at most max_connections // 4 waits in all


class AgentBusy(Exception):
    """Another agent already serves this state folder."""


class Job:
    """An accepted job: its id, its validated request (never re-read from disk) and the
    configured power source the request named, and when it was queued (a device shared by
    several controllers runs one job at a time: the wait is recorded apart, never timed)."""

    __slots__ = ("job_id", "request", "power", "queued_at")

    def __init__(self, job_id: str, request: MeasureRequest,
                 power: Optional[PowerSourceConfig]) -> None:
        self.job_id = job_id
        self.request = request
        self.power = power
        self.queued_at = time.time()

    @property
    def model_sha256(self) -> str:
        return self.request.model_sha256


class Agent:
    """Model store, persisted jobs and the single measuring thread."""

    def __init__(self, config: AgentConfig, python: str = sys.executable) -> None:
        self.config = config
        self.state_dir = config.state_dir
        os.makedirs(self.state_dir, exist_ok=True)
        self._hold_state_dir()
        max_store = int(config.max_store_mb * 1e6) if config.max_store_mb else None
        self.models = ModelStore(os.path.join(self.state_dir, "models"), max_store)
        self.jobs = JobStore(os.path.join(self.state_dir, "jobs"))
        self.engines_dir = os.path.join(self.state_dir, "engines")  # what runtimes build
        self.worker_memory_bytes = config.worker_memory_bytes(facts.memory_total_mb())
        self.workers = Workers(python, self.worker_memory_bytes)
        self._in_use: Dict[str, int] = {}  # sha256 -> queued or running jobs using it
        self._queue: "queue.Queue[Job]" = queue.Queue(maxsize=config.max_queue)
        self._lock = threading.Lock()  # the queue's admission, reference counts, reservations
        self._worker_slot = WorkerSlot()  # one worker process at a time, of either kind
        self.intake = ModelIntake(self.models, self.workers, self._worker_slot, self._lock,
                                  self._in_use)
        self._current: Optional[subprocess.Popen] = None
        self._stopping = threading.Event()
        self._finished = threading.Condition()  # notified whenever a job finishes
        self._waits: Dict[str, int] = {}  # job id -> long-polls held on it (under _finished)
        self.max_waits = max(1, config.max_connections // WAITS_SHARE_OF_CONNECTIONS)
        self._leftovers: List[Tuple[int, Optional[int]]] = []  # workers that would not die
        self._recover()
        self._prune_history()
        self._thread = threading.Thread(target=self._run_jobs, name="measure", daemon=True)
        self._thread.start()

    def _hold_state_dir(self) -> None:
        """One agent per state folder: two would measure at once and share a store."""
        self._state_lock = open(os.path.join(self.state_dir, "agent.lock"), "a")
        try:
            fcntl.flock(self._state_lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._state_lock.close()
            raise AgentBusy("another hwnas-agent already uses %s; stop it first (hwnas agent "
                            "stop PROFILE) or give this one another --state-dir" % self.state_dir)

    # -- jobs ---------------------------------------------------------------
    def _recover(self) -> None:
        """A restart never loses a finished result; a job cut short says so, and its worker,
        if it survived the agent, is killed before anything else runs."""
        for job_id in self.jobs.all_ids():
            record = self.jobs.get(job_id) or {}
            if record.get("state") == JobState.RUNNING:
                worker = self.jobs.worker(job_id) or {}
                outcome = "no worker"
                if isinstance(worker.get("pid"), int):
                    outcome = lifeline.kill_group_if_same(worker["pid"], worker.get("start_ticks"))
                    if outcome in ("still running", "not ours"):  # waited out before any job
                        self._leftovers.append((worker["pid"], worker.get("start_ticks")))
                self.jobs.set_state(job_id, JobState.INTERRUPTED,
                                    error="the agent stopped while this job was running",
                                    leftover_worker=outcome)
            elif record.get("state") == JobState.QUEUED:
                try:
                    request = MeasureRequest.from_dict(self.jobs.request(job_id))
                    job = Job(job_id, request, self._power_source(request))
                except ProtocolError as exc:
                    self.jobs.set_state(job_id, JobState.FAILED,
                                        error="cannot run after a restart: %s" % exc.message)
                    continue
                try:
                    self._queue.put_nowait(job)
                    self._use(job.model_sha256, +1)
                except queue.Full:
                    self.jobs.set_state(job_id, JobState.FAILED,
                                        error="queue full when the agent restarted")

    def _power_source(self, request: MeasureRequest) -> Optional[PowerSourceConfig]:
        if request.power_source == NO_POWER:
            return None
        source = self.config.power_sources.get(request.power_source)
        if source is None:
            configured = ", ".join(sorted(self.config.power_sources)) or NO_POWER
            raise ProtocolError(400, "unknown_power_source",
                                "power source %r is not configured on this agent (configured: %s);"
                                " power sources are set in the agent's configuration file on the "
                                "device, which `hwnas agent install PROFILE` writes from the "
                                "profile's power section" % (request.power_source, configured))
        return source

    def submit(self, payload: Any) -> Dict[str, Any]:
        request = MeasureRequest.from_dict(payload)
        power = self._power_source(request)
        if self.models.meta(request.model_sha256) is None:
            raise ProtocolError(404, "unknown_model", "model %s is not stored here; upload it "
                                "first with PUT /v1/models/%s" % (request.model_sha256,
                                                                  request.model_sha256))
        with self._lock:
            if self._queue.full():
                raise ProtocolError(503, "queue_full", "%d jobs already queued; retry later"
                                    % self._queue.maxsize)
            job = Job(uuid.uuid4().hex, request, power)
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
        a client waits without polling (nothing disturbs the measurement under way). Over the
        bound of long-polls held, answered at once, with ``wait`` saying so."""
        record = self.jobs.get(job_id) if job_id.isalnum() else None
        if record is None:
            raise ProtocolError(404, "unknown_job", "no job %r on this agent (finished jobs whose "
                                "result was fetched are kept up to max_job_history = %d, for "
                                "job_history_days = %s)" % (job_id, self.config.max_job_history,
                                                            self.config.job_history_days))
        if wait_s <= 0 or record["state"] in FINISHED_STATES:
            return record
        deadline = time.monotonic() + wait_s
        with self._finished:
            on_job, in_all = self._waits.get(job_id, 0), sum(self._waits.values())
            if on_job >= MAX_WAITS_PER_JOB or in_all >= self.max_waits:
                return dict(record, wait="cut short: %d long-polls already wait on this job and "
                            "%d in all (at most %d on one job, %d in all: a quarter of "
                            "max_connections); ask again" % (on_job, in_all, MAX_WAITS_PER_JOB,
                                                             self.max_waits))
            self._waits[job_id] = on_job + 1
            try:
                # read again under the lock: a job that finished since cannot be waited past
                record = self.jobs.get(job_id) or record
                while record["state"] not in FINISHED_STATES and time.monotonic() < deadline:
                    self._finished.wait(timeout=max(0.0, deadline - time.monotonic()))
                    record = self.jobs.get(job_id) or record
            finally:
                self._waits[job_id] -= 1
                if not self._waits[job_id]:
                    del self._waits[job_id]
        return record

    def mark_fetched(self, job_id: str) -> None:
        """A client was sent the job's finished record: it may leave the history now."""
        self.jobs.mark_fetched(job_id)

    def _prune_history(self) -> None:
        days = self.config.job_history_days
        self.jobs.prune(set(FINISHED_STATES), self.config.max_job_history,
                        None if days is None else days * 86400.0)

    def _run_jobs(self) -> None:
        while self._leftovers and not self._stopping.is_set():  # never two measurements at once
            self._leftovers = [(pid, ticks) for pid, ticks in self._leftovers
                               if lifeline.start_ticks(pid) == ticks]
            time.sleep(0.1)
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if not self._worker_slot.acquire(load_check=False, give_up=self._stopping.is_set):
                break  # still queued on disk: a restarted agent runs it
            try:
                self._execute(job)
            except Exception as exc:  # a job fails; the agent keeps serving
                self.jobs.set_state(job.job_id, JobState.FAILED, error="agent error: %s" % exc)
            finally:
                self._worker_slot.release()
                with self._lock:
                    self._use(job.model_sha256, -1)
                with self._finished:
                    self._finished.notify_all()
            try:
                self._prune_history()
            except OSError:  # a full or read-only disk must not stop the measuring thread
                pass

    def _execute(self, job: Job) -> None:
        job_dir = self.jobs.job_dir(job.job_id)
        started = time.time()
        # when it started and how long it waited in the queue: every later state keeps both
        timing = {"started_unix_time": started, "queued_unix_time": job.queued_at,
                  "queued_seconds": max(0.0, started - job.queued_at)}
        self.jobs.set_state(job.job_id, JobState.RUNNING, **timing)
        model_path, data_files = self.models.files(job.model_sha256)
        command = self.workers.command("measure", job_dir, model_path, "--data-files",
                                       json.dumps(data_files), "--cache-dir", self.engines_dir)
        if job.power is not None:
            command += ["--power-source", json.dumps({"kind": job.power.kind,
                                                      "options": job.power.options})]
        log_path = os.path.join(job_dir, "worker.log")
        with open(log_path, "wb") as log:
            process, lease = self.workers.spawn(
                command, log, subprocess.STDOUT,
                lambda p: self.jobs.set_worker(job.job_id, p.pid, lifeline.start_ticks(p.pid)))
        self._current = process
        try:
            process.wait(timeout=job.request.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.jobs.set_state(job.job_id, JobState.FAILED, **timing,
                                error="timed out after %.0f s (timeout_s)" % job.request.timeout_s)
            return
        finally:
            self._current = None
            os.close(lease)
            reap_group(process.pid)
        wall = time.time() - started
        if self._stopping.is_set():
            self.jobs.set_state(job.job_id, JobState.INTERRUPTED,
                                error="the agent was stopped during the job")
        elif process.returncode == 0 and os.path.exists(os.path.join(job_dir, "result.json")):
            self.jobs.set_state(job.job_id, JobState.DONE, job_wall_seconds=wall, **timing)
        elif process.returncode < 0:
            self.jobs.set_state(job.job_id, JobState.FAILED, **timing,
                                error="the runtime crashed (%s)%s; output: %s"
                                % (signal_name(process.returncode), self.workers.memory_note(),
                                   tail(log_path)))
        else:
            error = (read_json(os.path.join(job_dir, "error.json")) or {}).get("error", {})
            message = error.get("message") or tail(log_path)
            self.jobs.set_state(job.job_id, JobState.FAILED, **timing,
                                error="%s: %s" % (error.get("type", "worker"), message))

    def stop(self) -> None:
        self._stopping.set()
        current = self._current
        if current is not None and current.poll() is None:
            os.killpg(current.pid, signal.SIGKILL)
        self._thread.join(timeout=10)
        self._state_lock.close()
