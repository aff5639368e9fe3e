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
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from hwnas_agent import __version__, facts
from hwnas_agent.jobs import Agent
from hwnas_agent.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, ProtocolError, is_sha256

DEFAULT_MAX_MODEL_BYTES = 1 << 30
DEFAULT_MAX_JSON_BYTES = 1 << 20
MAX_WAIT_S = 60.0


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
        return self.agent.put_model(sha256, self._read_body(DEFAULT_MAX_MODEL_BYTES))

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
