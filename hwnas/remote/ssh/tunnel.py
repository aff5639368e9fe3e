"""HTTP to the agent through a direct-tcpip channel of an SSH session, reconnecting with
back-off when the link drops."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any

import paramiko

from hwnas.errors import DeviceError
from hwnas.remote.ssh.errors import AgentNotAnswering, AgentNotRunning, HostUnreachable, LinkDropped
from hwnas.remote.ssh.session import BACKOFF_S, SSHSession
from hwnas.remote.transport import Response, Transport


class _ChannelSocket:
    """What http.client needs of a socket, on a paramiko channel."""

    # paramiko's Channel.sendall re-slices the rest of its buffer after every packet (~32 KB),
    # which is quadratic in the payload: a 50 MB model took 17 s. Bounded chunks keep it linear.
    CHUNK = 256 * 1024

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.CHUNK):
            self._channel.sendall(view[start:start + self.CHUNK].tobytes())

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.makefile(mode)

    def close(self) -> None:
        self._channel.close()

    def settimeout(self, timeout: float | None) -> None:
        self._channel.settimeout(timeout)


class SSHTransport(Transport):
    """HTTP to the agent over SSH; on a dropped link, reconnect with back-off and retry.

    Every request is safe to repeat: uploads are addressed by sha256 and a repeated job
    submission at worst measures twice; results are read by job id.

    Nothing listening on the agent port fails at once while the agent has never answered on
    this transport (not installed: the message says what to run). Once it has answered, the
    same refusal is an agent restarting (a crash and its service manager) and is retried like
    a dropped link: failing at once handed a job to another device of the pool in the second
    or so between the old process exiting and the new one listening (a CI failure).
    """

    def __init__(self, session: SSHSession, agent_port: int, retries: int = 4) -> None:
        self.session, self.agent_port, self.retries = session, agent_port, retries
        self.description = f"agent of {session.device}"
        self.reconnects = 0
        self.answered = False  # has the agent ever answered on this transport?

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.reconnects += 1
                time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            try:
                channel = self.session.channel(self.agent_port, timeout)
            except (HostUnreachable, LinkDropped) as exc:  # anything else cannot heal by waiting
                last_error = exc
                self.session.drop()
                continue
            except AgentNotRunning as exc:
                if not self.answered:  # never seen: not installed, say so now
                    raise
                last_error = exc  # it answered before: restarting; the link itself is fine
                continue
            connection = http.client.HTTPConnection("127.0.0.1", self.agent_port, timeout=timeout)
            connection.sock = _ChannelSocket(channel)  # type: ignore[assignment]
            try:
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                answer = Response(response.status, response.read())
                self.answered = True
                return answer
            except (OSError, EOFError, socket.timeout, paramiko.SSHException,
                    http.client.HTTPException) as exc:
                last_error = exc
                self.session.drop()
            finally:
                connection.close()
        if isinstance(last_error, http.client.RemoteDisconnected):
            raise AgentNotAnswering(f"{self.session.device}: the agent took the connection and "
                                    f"closed it without an answer (starting or stopping?); gave "
                                    f"up after {self.retries + 1} attempts")
        if isinstance(last_error, AgentNotRunning):
            raise AgentNotRunning(f"{last_error} (it answered earlier; still not listening "
                                  f"after {self.retries + 1} attempts)")
        raise DeviceError(f"{self.session.device}: the SSH link kept dropping ({last_error}); "
                          f"gave up after {self.retries + 1} attempts")

    def close(self) -> None:
        self.session.close()
