"""The agent's HTTP side: routing, the secret token, limits. The jobs live in jobs.py.

Routes (all JSON, errors as {"error": {"code", "message"}} with a 4xx/5xx status); every
request carries ``Authorization: Bearer <token>`` (401 without it):
  GET  /v1/hello               versions; a client sends X-Hwnas-Protocol and gets 409 on mismatch
  GET  /v1/facts               what this device is and has
  GET  /v1/models/<sha256>     200 with the stored model's signature, 404 if absent
  PUT  /v1/models/<sha256>     raw ONNX bytes, streamed to disk; verified against the sha256,
                               loaded once to prove they are a model, stored content-addressed
  PUT  /v1/models/<sha256>/files  a model of several files (manifest.py), addressed by its
                               manifest's sha256: the manifest's JSON on one line, then each
                               file's bytes in its order; every file verified, then as above
  POST /v1/jobs                a MeasureRequest; 202 with the queued job
  GET  /v1/jobs/<id>[?wait=S]  the job's state, and its measurement once done; with wait,
                               held up to S seconds (<= 60) until the job finishes

Limits: at most ``max_connections`` connections; a connection gets HEADER_DEADLINE_S to send
its request line and headers (a slow-loris client cannot hold a slot longer), and when the
cap is reached the oldest connection not yet past authentication makes room for a new one.
When every connection is past authentication (uploads, long-polls), RESERVE_CONNECTIONS more
serve hello and facts alone (anything else there: 503), so that they always answer
(connections.py); and long-polls held at once are bounded (jobs.py), so that they cannot
take every connection.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Dict, Optional, Tuple

from hwnas_agent import __version__, facts, lifeline
from hwnas_agent.config import AgentConfig, read_or_create_token
from hwnas_agent.connections import IDLE_READ_S, AgentHTTPServer, DeadlineReader
from hwnas_agent.jobs import Agent
from hwnas_agent.manifest import MAX_MANIFEST_BYTES
from hwnas_agent.protocol import (
    AUTH_HEADER,
    AUTH_SCHEME,
    PROTOCOL_HEADER,
    FINISHED_STATES,
    PROTOCOL_VERSION,
    ProtocolError,
    is_sha256,
)

DEFAULT_MAX_MODEL_BYTES = 1 << 30
DEFAULT_MAX_JSON_BYTES = 1 << 20
MAX_WAIT_S = 60.0
HEADER_DEADLINE_S = 10.0  # request line and headers, from the first byte awaited
MIN_BODY_BYTES_PER_S = 32 * 1024  # a body may take 30 s plus its length at this rate
RESERVE_ROUTES = ("hello", "facts")


class Handler(BaseHTTPRequestHandler):
    server_version = "hwnas-agent/" + __version__
    protocol_version = "HTTP/1.1"
    timeout = IDLE_READ_S
    agent: Agent  # set on the subclass made by make_server
    token: str
    server: AgentHTTPServer
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self), 64 * 1024)

    def handle_one_request(self) -> None:
        state = self.server.connection_state(self.request)
        if state is not None:
            state.authenticated = False  # between requests a connection is evictable again
        self.deadline = time.monotonic() + HEADER_DEADLINE_S
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if os.environ.get("HWNAS_AGENT_ACCESS_LOG"):
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def __getattr__(self, name: str) -> Any:
        # every method, known or not (BREW, OPTIONS...), gets the same JSON answer: a 4xx
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        self._fetched_job = None  # a finished job whose record this answer carries
        state = self.server.connection_state(self.request)
        on_reserve = state is not None and state.reserve
        if on_reserve:
            self.close_connection = True  # one request: the reserve is never held
        try:
            self._check_version()
            self._authenticate()
            status, payload = self._route(method, self.path.split("?", 1)[0].rstrip("/"),
                                          on_reserve)
        except ProtocolError as exc:
            status, payload = exc.status, exc.to_dict()
            if status == 401:
                payload["agent"] = "hwnas-agent"  # the client can tell an agent from a stranger
        except Exception as exc:  # never let one request take the daemon down
            status, payload = 500, {"error": {"code": "internal", "message": repr(exc)}}
            self.close_connection = True
        if status >= 400 and self.headers.get("Content-Length") not in (None, "0") \
                and not getattr(self, "_body_read", False):
            self.close_connection = True  # an unread body must not be taken for a request
        if self._send(status, payload) and self._fetched_job is not None:
            # sent in full: from now on the job may leave the agent's bounded history
            self.agent.mark_fetched(self._fetched_job)

    def _check_version(self) -> None:
        client_version = self.headers.get(PROTOCOL_HEADER)
        if client_version is not None and client_version.strip() != str(PROTOCOL_VERSION):
            raise ProtocolError(409, "version_mismatch", "this agent (hwnas-agent %s) speaks protocol "
                                "%d, the client speaks %s: install matching versions of hwnas and "
                                "hwnas-agent" % (__version__, PROTOCOL_VERSION, client_version))

    def _authenticate(self) -> None:
        scheme, _, given = (self.headers.get(AUTH_HEADER) or "").partition(" ")
        if not (scheme == AUTH_SCHEME and hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                              self.token.encode("utf-8"))):
            raise ProtocolError(401, "unauthorized", "this agent serves only requests that carry "
                                "its secret token (%s: %s <token>); the token is in the agent's "
                                "token file on the device, which `hwnas agent install PROFILE` "
                                "creates and hwnas reads over SSH"
                                % (AUTH_HEADER, AUTH_SCHEME))
        state = self.server.connection_state(self.request)
        if state is not None:
            state.authenticated = True

    def _route(self, method: str, path: str, on_reserve: bool = False
               ) -> Tuple[int, Dict[str, Any]]:
        parts = path.split("/")[1:]
        if parts[:1] != ["v1"] or len(parts) < 2:
            raise ProtocolError(404, "unknown_operation", "no operation at %s %s" % (method, path))
        resource, rest = parts[1], parts[2:]
        if on_reserve and (resource not in RESERVE_ROUTES or rest):
            raise ProtocolError(503, "busy", "all %d connections (max_connections) serve requests "
                                "in progress (uploads, long-polls); this one, over the cap, may "
                                "only ask for hello or facts: retry shortly"
                                % self.server.max_connections)
        routes = {
            ("hello", 0): {"GET": lambda: (200, self._hello())},
            ("facts", 0): {"GET": lambda: (200, facts.device_facts())},
            ("models", 1): {"GET": lambda: self._get_model(rest[0]),
                            "PUT": lambda: self._put_model(rest[0])},
            ("models", 2): {"PUT": lambda: self._put_files(rest[0], rest[1])},
            ("jobs", 0): {"POST": lambda: (202, self.agent.submit(self._read_json()))},
            ("jobs", 1): {"GET": lambda: self._get_job(rest[0])},
        }
        handlers = routes.get((resource, len(rest)))
        if handlers is None:
            raise ProtocolError(404, "unknown_operation", "no operation at %s %s" % (method, path))
        if method not in handlers:
            raise ProtocolError(405, "method_not_allowed", "%s is not allowed on %s; allowed: %s"
                                % (method, path, ", ".join(sorted(handlers))))
        return handlers[method]()

    def _get_job(self, job_id: str) -> Tuple[int, Dict[str, Any]]:
        record = self.agent.job(job_id, self._wait_s())
        if record.get("state") in FINISHED_STATES:
            self._fetched_job = job_id
        return 200, record

    def _wait_s(self) -> float:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "wait":
                try:
                    wait = float(value)
                except ValueError:
                    wait = float("nan")
                if not wait == wait:  # NaN: not a number of seconds
                    raise ProtocolError(400, "bad_request", "wait=%r is not a number of seconds"
                                        % value)
                return min(max(wait, 0.0), MAX_WAIT_S)
        return 0.0

    def _hello(self) -> Dict[str, Any]:
        return {"agent": "hwnas-agent", "agent_version": __version__,
                "protocol_version": PROTOCOL_VERSION, "python": sys.version.split()[0],
                "runtimes": facts.runtimes(),
                # what each source name means here: the controller checks it matches its profile
                "power_sources": {name: {"kind": s.kind, "options": s.options}
                                  for name, s in self.agent.config.power_sources.items()},
                "worker_memory_mb": (self.agent.worker_memory_bytes or 0) / 1048576.0}

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
            raise ProtocolError(400, "bad_sha256", "%r is not a sha256 (64 lowercase hex)" % sha256)
        length = self._body_length(self._model_limit())
        self._body_read = True  # from here on the body is consumed or the connection closed
        self.close_connection = True
        status, meta = self.agent.intake.put_model(sha256, self.rfile.read, length)
        self.close_connection = False
        return status, meta

    def _put_files(self, sha256: str, what: str) -> Tuple[int, Dict[str, Any]]:
        if what != "files":
            raise ProtocolError(404, "unknown_operation", "no operation at PUT %s" % self.path)
        if not is_sha256(sha256):
            raise ProtocolError(400, "bad_sha256", "%r is not a sha256 (64 lowercase hex)" % sha256)
        limit = self._model_limit()
        length = self._body_length(limit + MAX_MANIFEST_BYTES + 1)
        self._body_read = True
        self.close_connection = True
        status, meta = self.agent.intake.put_files(sha256, self.rfile.readline, self.rfile.read,
                                                   length, limit)
        self.close_connection = False
        return status, meta

    def _model_limit(self) -> int:
        limit = DEFAULT_MAX_MODEL_BYTES
        if self.agent.models.max_bytes is not None:
            limit = min(limit, self.agent.models.max_bytes)
        return limit

    def _body_length(self, limit: int) -> int:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise ProtocolError(411, "length_required", "send a Content-Length header")
        try:
            length = int(length_text)
        except ValueError:
            raise ProtocolError(400, "bad_request", "Content-Length %r is not a number" % length_text)
        if length < 0 or length > limit:
            raise ProtocolError(413, "too_large", "body of %d bytes; at most %d allowed"
                                % (length, limit))
        # a slow body holds a connection too: it gets time in proportion to its size
        self.deadline = time.monotonic() + IDLE_READ_S + length / float(MIN_BODY_BYTES_PER_S)
        return length

    def _read_json(self) -> Any:
        length = self._body_length(DEFAULT_MAX_JSON_BYTES)
        self._body_read = True
        try:
            data = self.rfile.read(length)
        except OSError:
            data = b""
        if len(data) != length:
            self.close_connection = True
            raise ProtocolError(400, "truncated_body", "expected %d bytes, got %d"
                                % (length, len(data)))
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(400, "bad_json", "the body is not valid JSON: %s" % exc)
        except RecursionError:
            raise ProtocolError(400, "bad_json", "the body is JSON nested too deeply")

    def _send(self, status: int, payload: Dict[str, Any]) -> bool:
        """True if the whole answer was handed to the connection."""
        body = json.dumps(payload).encode("utf-8")
        sent = False
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            sent = True
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True
        self._body_read = False
        return sent


def check_host(host: str, allow_remote: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise SystemExit("refusing to listen on %s: the agent serves 127.0.0.1 only and is reached "
                         "through SSH; pass --allow-remote to override" % host)


def make_server(agent: Agent, token: str, host: str = "127.0.0.1", port: int = 0,
                max_connections: int = 64) -> AgentHTTPServer:
    handler = type("AgentHandler", (Handler,), {"agent": agent, "token": token})
    return AgentHTTPServer((host, port), handler, max_connections)


def serve(config: AgentConfig, allow_remote: bool = False, parent_pid: Optional[int] = None,
          lease_stdin: bool = False) -> int:
    """Serve until SIGTERM/SIGINT, or until the parent dies: with ``parent_pid`` (Linux's
    parent-death signal) and ``lease_stdin`` (EOF on stdin). The controller's local agent uses
    both: it must not outlive the controller, even under kill -9."""
    check_host(config.host, allow_remote)
    token = read_or_create_token(config.token_path)
    agent = Agent(config)
    server = make_server(agent, token, config.host, config.port, config.max_connections)

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if parent_pid is not None:
        lifeline.die_with_parent(parent_pid, signal.SIGTERM)
    if lease_stdin:
        lifeline.on_stdin_eof(stop)
    bound_host, bound_port = server.server_address[:2]
    # one machine-readable line: the controller reads the port it was given
    print(json.dumps({"event": "listening", "host": bound_host, "port": bound_port,
                      "pid": os.getpid(), "state_dir": config.state_dir,
                      "token_file": config.token_path, "protocol_version": PROTOCOL_VERSION,
                      "agent_version": __version__}), flush=True)
    if lease_stdin:
        os.dup2(2, 1)  # nothing more on stdout: the controller stops reading that pipe
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.stop()
        server.server_close()
    return 0
