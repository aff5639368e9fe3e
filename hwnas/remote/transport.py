"""A transport carries one HTTP request to an agent and brings back the response.

The loopback transport talks to 127.0.0.1:PORT; the SSH transport (ssh/tunnel.py) opens the
same HTTP connection through a direct-tcpip channel. The client above never knows which.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
from typing import Any

from hwnas.errors import DeviceError


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {"error": {"code": "not_json", "message": self.body[:200].decode("utf-8", "replace")}}


class Transport:
    """Contract: ``request(method, path, body, headers, timeout) -> Response``; ``close()``."""

    description = "agent"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LoopbackTransport(Transport):
    def __init__(self, port: int, host: str = "127.0.0.1", description: str = "local agent") -> None:
        self.host, self.port, self.description = host, port, description

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        connection = self._connect(timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, response.read())
        except (ConnectionError, socket.timeout, OSError, http.client.HTTPException) as exc:
            raise DeviceError(f"{self.description} at {self.host}:{self.port} did not answer "
                              f"{method} {path}: {exc!r}; is the agent running?") from None
        finally:
            connection.close()
