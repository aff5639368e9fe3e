"""SSH to a device with paramiko: strict host keys, keys or ssh-agent only, jump hosts,
~/.ssh/config aliases, and the agent reached through a direct-tcpip channel to the device's
own 127.0.0.1. Low-level failures become one DeviceError that says what to do next.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import http.client
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from hwnas.config.models import SSHConnection
from hwnas.errors import DeviceError
from hwnas.remote.transport import Response, Transport

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# paramiko logs every refused channel and reset socket; each becomes a DeviceError that says
# what to do, so its own lines would only repeat them half-explained
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class AgentNotRunning(DeviceError):
    """SSH works but nothing listens on the agent port of the device."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    proxy_jump: str | None

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config(path: Path | None) -> paramiko.SSHConfig:
    if path is not None and path.expanduser().exists():
        return paramiko.SSHConfig.from_path(str(path.expanduser()))
    return paramiko.SSHConfig()


def resolve(spec: str, config: paramiko.SSHConfig, port: int | None = None,
            user: str | None = None, identity: Path | None = None,
            jump: str | None = None) -> Endpoint:
    """A host (or `user@host:port`, or a Host alias of ~/.ssh/config) to connect to."""
    if "@" in spec:
        user_part, spec = spec.split("@", 1)
        user = user or user_part
    if spec.count(":") == 1:
        spec, port_text = spec.split(":")
        port = port or int(port_text)
    entry = config.lookup(spec)
    identities = [str(identity.expanduser())] if identity else entry.get("identityfile", [])
    return Endpoint(hostname=entry.get("hostname", spec), port=port or int(entry.get("port", 22)),
                    user=user or entry.get("user") or getpass.getuser(),
                    identity_files=tuple(identities), proxy_jump=jump or entry.get("proxyjump"))


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a key silently: refuse it with its fingerprint and how to trust it."""

    def __init__(self, device: str, endpoint: Endpoint, known_hosts: Path) -> None:
        self.device, self.endpoint, self.known_hosts = device, endpoint, known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        port = f"-p {self.endpoint.port} " if self.endpoint.port != 22 else ""
        raise DeviceError(
            f"{self.device}: unknown host key for {self.endpoint.known_hosts_name}: "
            f"{key.get_name()} {fingerprint(key)}. hwnas never trusts a host key silently. "
            f"Compare it with the device's own (on the device: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().replace('ssh-', '').split('-')[0]}_key.pub), "
            f"then trust it: ssh-keyscan {port}{self.endpoint.hostname} >> {self.known_hosts}")


class SSHSession:
    """One SSH connection to a device (through a jump host if any); reconnects on demand."""

    def __init__(self, device: str, connection: SSHConnection) -> None:
        self.device = device
        self.connection = connection
        self.config = _ssh_config(connection.ssh_config)
        self.endpoint = resolve(connection.host, self.config, connection.port, connection.user,
                                connection.identity_file, connection.jump_host)
        self.known_hosts = connection.known_hosts.expanduser()
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def _open(self, endpoint: Endpoint, sock: Any = None) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_RefuseUnknown(self.device, endpoint, self.known_hosts))
        where = f"{endpoint.user}@{endpoint.hostname}:{endpoint.port}"
        try:
            client.connect(endpoint.hostname, endpoint.port, username=endpoint.user,
                           key_filename=list(endpoint.identity_files) or None,
                           allow_agent=self.connection.use_ssh_agent,
                           look_for_keys=not endpoint.identity_files, sock=sock,
                           timeout=self.connection.connect_timeout_s,
                           banner_timeout=self.connection.connect_timeout_s,
                           auth_timeout=self.connection.connect_timeout_s)
        except DeviceError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise DeviceError(
                f"{self.device}: the host key of {endpoint.known_hosts_name} CHANGED: it offered "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, {self.known_hosts} has "
                f"{fingerprint(exc.expected_key)}. This may be an attack or a reinstalled "
                f"device; if you know it was reinstalled: ssh-keygen -f {self.known_hosts} -R "
                f"'{endpoint.known_hosts_name}' and trust the new key") from None
        except paramiko.AuthenticationException:
            client.close()
            keys = ", ".join(endpoint.identity_files) or "the ssh-agent's and default keys"
            raise DeviceError(
                f"{self.device}: {where} refused authentication with {keys}; install your public "
                f"key on the device (ssh-copy-id -p {endpoint.port} {endpoint.user}@"
                f"{endpoint.hostname}) or set identity_file in the profile") from None
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise DeviceError(f"{self.device}: cannot reach {where}: {exc}; check the address, "
                              f"the network and that sshd runs on the device") from None
        return client

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return self._client  # type: ignore[return-value]
            self._close_locked()
            sock = None
            if self.endpoint.proxy_jump:
                jump = resolve(self.endpoint.proxy_jump, self.config)
                self._jump = self._open(jump)
                sock = self._jump.get_transport().open_channel(  # type: ignore[union-attr]
                    "direct-tcpip", (self.endpoint.hostname, self.endpoint.port), ("127.0.0.1", 0))
            self._client = self._open(self.endpoint, sock)
            self._client.get_transport().set_keepalive(15)  # type: ignore[union-attr]
            return self._client

    def channel(self, port: int, timeout: float) -> paramiko.Channel:
        """A direct-tcpip channel to the device's 127.0.0.1:port."""
        transport = self.client().get_transport()
        try:
            channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port),  # type: ignore[union-attr]
                                             ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException:
            raise AgentNotRunning(f"agent not running on {self.device}: nothing listens on its "
                                  f"127.0.0.1:{port}; run `hwnas agent install PROFILE` (or "
                                  f"`hwnas agent status PROFILE`)") from None
        channel.settimeout(timeout)
        return channel

    def run(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        client = self.client()
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            return stdout.channel.recv_exit_status(), out, err
        except (socket.timeout, paramiko.SSHException) as exc:
            raise DeviceError(f"{self.device}: `{command}` failed: {exc}") from None

    def sftp(self) -> paramiko.SFTPClient:
        return self.client().open_sftp()

    def drop(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for client in (self._client, self._jump):
            if client is not None:
                client.close()
        self._client = self._jump = None

    close = drop


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
    """

    def __init__(self, session: SSHSession, agent_port: int, retries: int = 4) -> None:
        self.session, self.agent_port, self.retries = session, agent_port, retries
        self.description = f"agent of {session.device}"
        self.reconnects = 0

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.reconnects += 1
                time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            try:
                channel = self.session.channel(self.agent_port, timeout)
            except AgentNotRunning:
                raise
            except DeviceError as exc:
                last_error = exc
                if "refused authentication" in str(exc) or "host key" in str(exc):
                    raise  # retrying cannot fix trust or credentials
                continue
            connection = http.client.HTTPConnection("127.0.0.1", self.agent_port, timeout=timeout)
            connection.sock = _ChannelSocket(channel)  # type: ignore[assignment]
            try:
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                return Response(response.status, response.read())
            except (OSError, EOFError, socket.timeout, paramiko.SSHException,
                    http.client.HTTPException) as exc:
                last_error = exc
                self.session.drop()
            finally:
                connection.close()
        raise DeviceError(f"{self.session.device}: the SSH link kept dropping ({last_error}); "
                          f"gave up after {self.retries + 1} attempts")

    def close(self) -> None:
        self.session.close()

