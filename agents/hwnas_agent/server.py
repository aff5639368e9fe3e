"""The agent daemon: HTTP + JSON on 127.0.0.1, one measurement at a time.

Routes (all JSON, errors as {"error": {"code", "message"}} with a 4xx/5xx status):
  GET  /v1/hello               versions; a client sends X-Hwnas-Protocol and gets 409 on mismatch
  GET  /v1/facts               what this device is and has
  GET  /v1/models/<sha256>     200 with the stored model's signature, 404 if absent
  PUT  /v1/models/<sha256>     raw ONNX bytes; verified against the sha256, loaded once to
                               prove they are a model, stored content-addressed
  POST /v1/jobs                a MeasureRequest; 202 with the queued job
  GET  /v1/jobs/<id>[?wait=S]  the job's state, and its measurement once done; with wait,
                               held up to S seconds (<= 60) until the job finishes
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from hwnas_agent import __version__, facts
from hwnas_agent.protocol import (
    FINISHED_STATES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    MeasureRequest,
    ProtocolError,
    is_sha256,
)
from hwnas_agent.storage import JobStore, ModelStore, read_json, sha256_hex

DEFAULT_MAX_MODEL_BYTES = 1 << 30
DEFAULT_MAX_JSON_BYTES = 1 << 20
INSPECT_TIMEOUT_S = 120.0
MAX_WAIT_S = 60.0


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return "signal %d" % -returncode


class Agent:
    """Model store, persisted jobs and the single measuring thread."""

    def __init__(self, state_dir: str, max_queue: int = 16, python: str = sys.executable,
                 max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                 max_store_bytes: Optional[int] = None) -> None:
        self.state_dir = state_dir
        self.models = ModelStore(os.path.join(state_dir, "models"), max_store_bytes)
        self._in_use: Dict[str, int] = {}  # sha256 -> queued or running jobs using it
        self.jobs = JobStore(os.path.join(state_dir, "jobs"))
        self.python = python
        self.max_model_bytes = max_model_bytes
        self._queue: "queue.Queue[str]" = queue.Queue(maxsize=max_queue)
        self._submit_lock = threading.Lock()
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
                    self._use(self._job_model(job_id), +1)
                    self._queue.put_nowait(job_id)
                except queue.Full:
                    self.jobs.set_state(job_id, "failed", error="queue full when the agent restarted")

    def submit(self, payload: Any) -> Dict[str, Any]:
        request = MeasureRequest.from_dict(payload)
        if self.models.meta(request.model_sha256) is None:
            raise ProtocolError(404, "unknown_model", "model %s is not stored here; upload it "
                                "first with PUT /v1/models/%s" % (request.model_sha256,
                                                                  request.model_sha256))
        with self._submit_lock:
            if self._queue.full():
                raise ProtocolError(503, "queue_full", "%d jobs already queued; retry later"
                                    % self._queue.maxsize)
            job_id = uuid.uuid4().hex
            record = self.jobs.create(job_id, request.to_dict())
            self._use(request.model_sha256, +1)
            self.models.touch(request.model_sha256)
            self._queue.put_nowait(job_id)
        return record

    def _job_model(self, job_id: str) -> str:
        request = read_json(os.path.join(self.jobs.job_dir(job_id), "request.json")) or {}
        return str(request.get("model_sha256", ""))

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
                job_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._execute(job_id)
            except Exception as exc:  # a job fails; the agent keeps serving
                self.jobs.set_state(job_id, "failed", error="agent error: %s" % exc)
            finally:
                with self._submit_lock:
                    self._use(self._job_model(job_id), -1)
                with self._finished:
                    self._finished.notify_all()

    def _execute(self, job_id: str) -> None:
        job_dir = self.jobs.job_dir(job_id)
        request = MeasureRequest.from_dict(read_json(os.path.join(job_dir, "request.json")))
        started = time.time()
        self.jobs.set_state(job_id, "running", started_unix_time=started)
        command = [self.python, "-m", "hwnas_agent.worker", "measure", job_dir,
                   self.models.path(request.model_sha256)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self._current = process
        try:
            _, stderr = process.communicate(timeout=request.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            self.jobs.set_state(job_id, "failed", started_unix_time=started,
                                error="timed out after %.0f s (timeout_s)" % request.timeout_s)
            return
        finally:
            self._current = None
        wall = time.time() - started
        if self._stopping.is_set():
            self.jobs.set_state(job_id, "interrupted", error="the agent was stopped during the job")
        elif process.returncode == 0 and os.path.exists(os.path.join(job_dir, "result.json")):
            self.jobs.set_state(job_id, "done", started_unix_time=started, job_wall_seconds=wall)
        elif process.returncode < 0:
            tail = stderr.decode("utf-8", "replace")[-2000:]
            self.jobs.set_state(job_id, "failed", started_unix_time=started,
                                error="the runtime crashed (%s); stderr: %s"
                                % (_signal_name(process.returncode), tail))
        else:
            error = (read_json(os.path.join(job_dir, "error.json")) or {}).get("error", {})
            message = error.get("message") or stderr.decode("utf-8", "replace")[-2000:]
            self.jobs.set_state(job_id, "failed", started_unix_time=started,
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
            with self._submit_lock:
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
            message = "onnxruntime crashed (%s) loading it" % _signal_name(done.returncode)
        else:
            message = done.stderr.decode("utf-8", "replace")[-1000:]
        raise ProtocolError(422, "invalid_model", "not a loadable ONNX model: %s" % message.strip())

    def stop(self) -> None:
        self._stopping.set()
        current = self._current
        if current is not None and current.poll() is None:
            os.killpg(current.pid, signal.SIGKILL)
        self._thread.join(timeout=10)


class Handler(BaseHTTPRequestHandler):
    server_version = "hwnas-agent/" + __version__
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stops mid-body cannot hold a thread forever
    agent: Agent  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if os.environ.get("HWNAS_AGENT_ACCESS_LOG"):
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        try:
            status, payload = self._route(method, self.path.split("?", 1)[0].rstrip("/"))
        except ProtocolError as exc:
            status, payload = exc.status, exc.to_dict()
        except Exception as exc:  # never let one request take the daemon down
            status, payload = 500, {"error": {"code": "internal", "message": repr(exc)}}
        self._send(status, payload)

    def _route(self, method: str, path: str) -> Tuple[int, Dict[str, Any]]:
        client_version = self.headers.get(PROTOCOL_HEADER)
        if client_version is not None and client_version.strip() != str(PROTOCOL_VERSION):
            raise ProtocolError(409, "version_mismatch", "this agent (hwnas-agent %s) speaks protocol "
                                "%d, the client speaks %s: install matching versions of hwnas and "
                                "hwnas-agent" % (__version__, PROTOCOL_VERSION, client_version))
        parts = path.split("/")[1:]
        if parts[:1] != ["v1"] or len(parts) < 2:
            raise ProtocolError(404, "unknown_operation", "no operation at %s %s" % (method, path))
        resource, rest = parts[1], parts[2:]
        routes = {
            ("hello", 0): {"GET": lambda: (200, self._hello())},
            ("facts", 0): {"GET": lambda: (200, facts.device_facts())},
            ("models", 1): {"GET": lambda: self._get_model(rest[0]),
                            "PUT": lambda: self._put_model(rest[0])},
            ("jobs", 0): {"POST": lambda: (202, self.agent.submit(self._read_json()))},
            ("jobs", 1): {"GET": lambda: (200, self.agent.job(rest[0], self._wait_s()))},
        }
        handlers = routes.get((resource, len(rest)))
        if handlers is None:
            raise ProtocolError(404, "unknown_operation", "no operation at %s %s" % (method, path))
        if method not in handlers:
            raise ProtocolError(405, "method_not_allowed", "%s is not allowed on %s; allowed: %s"
                                % (method, path, ", ".join(sorted(handlers))))
        return handlers[method]()

    def _wait_s(self) -> float:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "wait":
                try:
                    return min(max(float(value), 0.0), MAX_WAIT_S)
                except ValueError:
                    raise ProtocolError(400, "bad_request", "wait=%r is not a number of seconds"
                                        % value)
        return 0.0

    def _hello(self) -> Dict[str, Any]:
        return {"agent": "hwnas-agent", "agent_version": __version__,
                "protocol_version": PROTOCOL_VERSION, "python": sys.version.split()[0],
                "runtimes": facts.runtimes()}

    def _get_model(self, sha256: str) -> Tuple[int, Dict[str, Any]]:
        if not is_sha256(sha256):
            raise ProtocolError(400, "bad_sha256", "%r is not a sha256 (64 lowercase hex)" % sha256)
        meta = self.agent.models.meta(sha256)
        if meta is None:
            raise ProtocolError(404, "unknown_model", "model %s is not stored here" % sha256)
        self.agent.models.touch(sha256)
        return 200, meta

    def _put_model(self, sha256: str) -> Tuple[int, Dict[str, Any]]:
        if not is_sha256(sha256):
            self.close_connection = True
            raise ProtocolError(400, "bad_sha256", "%r is not a sha256 (64 lowercase hex)" % sha256)
        return self.agent.put_model(sha256, self._read_body(self.agent.max_model_bytes))

    def _read_body(self, limit: int) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise ProtocolError(411, "length_required", "send a Content-Length header")
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise ProtocolError(400, "bad_request", "Content-Length %r is not a number" % length_text)
        if length < 0 or length > limit:
            self.close_connection = True
            raise ProtocolError(413, "too_large", "body of %d bytes; at most %d allowed"
                                % (length, limit))
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            raise ProtocolError(400, "truncated_body", "expected %d bytes, got %d"
                                % (length, len(data)))
        return data

    def _read_json(self) -> Any:
        data = self._read_body(DEFAULT_MAX_JSON_BYTES)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(400, "bad_json", "the body is not valid JSON: %s" % exc)

    def _send(self, status: int, payload: Dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True


def check_host(host: str, allow_remote: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise SystemExit("refusing to listen on %s: the agent serves 127.0.0.1 only and is reached "
                         "through SSH; pass --allow-remote to override" % host)


def make_server(agent: Agent, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(state_dir: str, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False,
          max_queue: int = 16, max_store_mb: Optional[float] = None) -> int:
    check_host(host, allow_remote)
    agent = Agent(state_dir, max_queue=max_queue,
                  max_store_bytes=int(max_store_mb * 1e6) if max_store_mb else None)
    server = make_server(agent, host, port)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bound_host, bound_port = server.server_address[:2]
    # one machine-readable line: the controller reads the port it was given
    print(json.dumps({"event": "listening", "host": bound_host, "port": bound_port,
                      "pid": os.getpid(), "state_dir": state_dir,
                      "protocol_version": PROTOCOL_VERSION, "agent_version": __version__}),
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.stop()
        server.server_close()
    return 0
