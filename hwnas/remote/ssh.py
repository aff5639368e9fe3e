"""SSH to a device with paramiko: strict host keys (with OpenSSH's @revoked markers honoured),
keys or ssh-agent only, ProxyJump chains, ~/.ssh/config aliases, and the agent reached through
a direct-tcpip channel to the device's own 127.0.0.1.

Low-level failures become a few DeviceError classes whose messages say what to do next, and
whose class (never their text) decides whether a request is retried: a host that cannot be
reached or a link that dropped is retried; a refused host key, no usable key or a refused key
is not. Importing this module changes no logging state: the `hwnas` CLI quiets paramiko's own
log (each failure already becomes one clear message), `--debug` shows it.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import http.client
import logging
import os
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from hwnas.config.models import SSHConnection
from hwnas.errors import ConfigError, DeviceError
from hwnas.remote.transport import Response, Transport

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ed25519")  # what paramiko looks for in ~/.ssh
log = logging.getLogger(__name__)


class HostKeyRejected(DeviceError):
    """The host's key is unknown, changed or revoked: never retried, never trusted silently."""


class NoUsableKey(DeviceError):
    """No private key to offer: none given, none readable, none in the ssh-agent."""


class KeyRefused(DeviceError):
    """The host refused every key offered."""


class HostUnreachable(DeviceError):
    """No SSH connection to the host (address, network, sshd): worth retrying."""


class LinkDropped(DeviceError):
    """An established SSH connection broke: worth reconnecting and retrying."""


class NoSFTP(DeviceError):
    """The device's sshd serves no working SFTP subsystem, which hwnas needs for the agent's
    files: not a dropped link, never retried."""


class AgentNotRunning(DeviceError):
    """SSH works but nothing listens on the agent port of the device."""


class AgentNotAnswering(DeviceError):
    """SSH works and the agent port took the connection, but the process closed it without an
    answer (an agent starting up or shutting down)."""


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

    @property
    def where(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


def _ssh_config(path: Path | None) -> paramiko.SSHConfig:
    if path is not None and path.expanduser().exists():
        return paramiko.SSHConfig.from_path(str(path.expanduser()))
    return paramiko.SSHConfig()


def parse_destination(spec: str) -> tuple[str | None, str, int | None]:
    """OpenSSH's `[user@]host[:port]` (and `ssh://`, `[v6]:port`, a bare IPv6 address)."""
    text = spec[len("ssh://"):] if spec.startswith("ssh://") else spec
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port_text = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"SSH destination {spec!r}: expected [address]:port")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a name, or an IPv6 address without a port
    if not host:
        raise ConfigError(f"SSH destination {spec!r} names no host")
    if port_text is None:
        return user or None, host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"SSH destination {spec!r}: port {port_text!r} is not a number 1-65535")
    return user or None, host, int(port_text)


def split_jumps(value: str | None) -> tuple[str, ...]:
    """ProxyJump as OpenSSH writes it: hops separated by commas, in order; `none`: no jump."""
    if not value or value.strip().lower() == "none":
        return ()
    return tuple(hop.strip() for hop in value.split(",") if hop.strip())


def resolve(spec: str, config: paramiko.SSHConfig, port: int | None = None,
            user: str | None = None, identity: Path | None = None,
            jump: str | None = None, hop: bool = False) -> Endpoint:
    """A host (or `user@host:port`, or a Host alias of ~/.ssh/config) to connect to.

    The profile's identity file replaces the alias's own for the device; for a jump host
    (``hop``) it is added to them, so that one key given in the profile opens every hop."""
    spec_user, spec, spec_port = parse_destination(spec)
    user, port = user or spec_user, port or spec_port
    entry = config.lookup(spec)
    own = [str(Path(p).expanduser()) for p in entry.get("identityfile", [])]
    given = [str(identity.expanduser())] if identity else []
    identities = list(dict.fromkeys(own + given)) if hop else (given or own)
    return Endpoint(hostname=entry.get("hostname", spec), port=port or int(entry.get("port", 22)),
                    user=user or entry.get("user") or getpass.getuser(),
                    identity_files=tuple(identities),
                    proxy_jump=None if hop else (jump or entry.get("proxyjump")))


@dataclasses.dataclass(frozen=True)
class KnownHosts:
    """A known_hosts file as OpenSSH reads it: plain entries are trusted; `@revoked` keys are
    refused wherever they appear; `@cert-authority` lines are skipped (hwnas checks host keys,
    not host certificates) with a warning. Paramiko alone fails on either marker."""

    path: Path
    trusted: tuple[HostKeyEntry, ...]
    revoked: frozenset[bytes]
    cert_authorities: int

    @classmethod
    def load(cls, path: Path) -> "KnownHosts":
        trusted, revoked, authorities = [], set(), 0
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
            try:
                entry = HostKeyEntry.from_line(line.strip(), number)
            except InvalidHostKey:
                entry = None
            if marker == "@cert-authority":
                authorities += 1
            elif marker == "@revoked":
                if entry is not None:
                    revoked.add(entry.key.asbytes())
            elif marker is None and entry is not None:
                trusted.append(entry)
        if authorities:
            log.warning("%s: %d @cert-authority line(s) skipped: hwnas checks host keys, not host "
                        "certificates; add each device's own host key (ssh-keyscan)", path,
                        authorities)
        return cls(path, tuple(e for e in trusted if e.key.asbytes() not in revoked),
                   frozenset(revoked), authorities)

    def install(self, client: paramiko.SSHClient) -> None:
        keys = client.get_host_keys()
        for entry in self.trusted:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return key.asbytes() in self.revoked


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a key silently: refuse it with its fingerprint and how to trust it."""

    def __init__(self, session: "SSHSession", endpoint: Endpoint) -> None:
        self.session, self.endpoint = session, endpoint

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        known = self.session.known_hosts
        if known.is_revoked(key):
            raise self.session.revoked(self.endpoint, key)
        port = f"-p {self.endpoint.port} " if self.endpoint.port != 22 else ""
        note = (f" ({known.path} has @cert-authority lines, which hwnas does not use)"
                if known.cert_authorities else "")
        raise HostKeyRejected(
            f"{self.session.device}: unknown host key for {self.endpoint.known_hosts_name}: "
            f"{key.get_name()} {fingerprint(key)}{note}. hwnas never trusts a host key silently. "
            f"Compare it with the device's own (on the device: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().replace('ssh-', '').split('-')[0]}_key.pub), "
            f"then trust it: ssh-keyscan {port}{shlex.quote(self.endpoint.hostname)} >> "
            f"{shlex.quote(str(known.path))}")


def key_problems(endpoint: Endpoint, use_agent: bool) -> list[str]:
    """Why no key can be offered to ``endpoint``; empty when at least one can."""
    problems = []
    files = list(endpoint.identity_files)
    if not files:
        ssh_dir = Path("~/.ssh").expanduser()
        files = [str(ssh_dir / name) for name in DEFAULT_KEYS if (ssh_dir / name).exists()]
        if not files:
            problems.append(f"no identity_file in the profile and no {', '.join(DEFAULT_KEYS)} "
                            f"in {ssh_dir}")
    for path in files:
        try:
            paramiko.PKey.from_path(path)
            return []
        except FileNotFoundError:
            problems.append(f"{path} does not exist")
        except paramiko.PasswordRequiredException:
            problems.append(f"{path} needs a passphrase (hwnas asks for none: add it to the "
                            f"ssh-agent with `ssh-add {shlex.quote(path)}`)")
        except Exception as exc:  # paramiko raises several kinds for "not a key it can use"
            problems.append(f"{path} is not a usable private key ({exc or type(exc).__name__})")
    if use_agent:
        try:
            agent = paramiko.Agent()
        except paramiko.SSHException:
            agent = None
        try:
            if agent is not None and agent.get_keys():
                return []
        finally:
            if agent is not None:
                agent.close()
        where = "no ssh-agent (SSH_AUTH_SOCK unset)" if not os.environ.get("SSH_AUTH_SOCK") \
            else "the ssh-agent holds no key"
        problems.append(where)
    else:
        problems.append("the ssh-agent is not used (use_ssh_agent: false)")
    return problems


class SSHSession:
    """One SSH connection to a device (through its jump hosts, if any); reconnects on demand."""

    def __init__(self, device: str, connection: SSHConnection) -> None:
        self.device = device
        self.connection = connection
        self.config = _ssh_config(connection.ssh_config)
        self.endpoint = resolve(connection.host, self.config, connection.port, connection.user,
                                connection.identity_file, connection.jump_host)
        self.jumps = tuple(resolve(hop, self.config, identity=connection.identity_file, hop=True)
                           for hop in split_jumps(self.endpoint.proxy_jump))
        self.known_hosts_path = connection.known_hosts.expanduser()
        self._known_hosts: KnownHosts | None = None
        self._client: paramiko.SSHClient | None = None
        self._hops: list[paramiko.SSHClient] = []
        self._lock = threading.Lock()

    @property
    def known_hosts(self) -> KnownHosts:
        if self._known_hosts is None:
            self._known_hosts = KnownHosts.load(self.known_hosts_path)
        return self._known_hosts

    def revoked(self, endpoint: Endpoint, key: paramiko.PKey) -> HostKeyRejected:
        return HostKeyRejected(
            f"{self.device}: the host key of {endpoint.known_hosts_name} ({key.get_name()} "
            f"{fingerprint(key)}) is marked @revoked in {self.known_hosts_path}: hwnas refuses "
            f"it. If the device was given a new key, compare its fingerprint on the device and "
            f"add that key")

    def _open(self, endpoint: Endpoint, sock: Any = None, role: str = "") -> paramiko.SSHClient:
        where = f"{endpoint.where}{role}"
        problems = key_problems(endpoint, self.connection.use_ssh_agent)
        if problems:
            raise NoUsableKey(
                f"{self.device}: no usable SSH key for {where}: {'; '.join(problems)}. Make one "
                f"(ssh-keygen -t ed25519), install it on the device ({self._copy_id(endpoint)}) "
                f"and name it in the profile (identity_file) or load it into the ssh-agent")
        client = paramiko.SSHClient()
        self.known_hosts.install(client)
        client.set_missing_host_key_policy(_RefuseUnknown(self, endpoint))
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
            if self.known_hosts.is_revoked(exc.key):
                raise self.revoked(endpoint, exc.key) from None
            raise HostKeyRejected(
                f"{self.device}: the host key of {endpoint.known_hosts_name} CHANGED: it offered "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, {self.known_hosts_path} has "
                f"{fingerprint(exc.expected_key)}. This may be an attack or a reinstalled "
                f"device; if you know it was reinstalled: ssh-keygen -f "
                f"{shlex.quote(str(self.known_hosts_path))} -R "
                f"{shlex.quote(endpoint.known_hosts_name)} and trust the new key") from None
        except paramiko.AuthenticationException:
            client.close()
            keys = ", ".join(endpoint.identity_files) or "the ssh-agent's and default keys"
            raise KeyRefused(
                f"{self.device}: {where} refused the key(s) ({keys}); install your public key on "
                f"the device ({self._copy_id(endpoint)}) or set identity_file in the profile"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise HostUnreachable(f"{self.device}: cannot reach {where}: {exc or type(exc).__name__}"
                                  f"; check the address, the network and that sshd runs there"
                                  ) from None
        return client

    @staticmethod
    def _copy_id(endpoint: Endpoint) -> str:
        key = f"-i {shlex.quote(endpoint.identity_files[0] + '.pub')} " \
            if endpoint.identity_files else ""
        return (f"ssh-copy-id {key}-p {endpoint.port} "
                f"{shlex.quote(endpoint.user + '@' + endpoint.hostname)}")

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return self._client  # type: ignore[return-value]
            self._close_locked()
            try:
                sock = None
                for hop, after in zip(self.jumps, self.jumps[1:] + (self.endpoint,)):
                    hop_client = self._open(hop, sock, " (jump host)")
                    self._hops.append(hop_client)
                    try:
                        sock = hop_client.get_transport().open_channel(  # type: ignore[union-attr]
                            "direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0),
                            timeout=self.connection.connect_timeout_s)
                    except (paramiko.SSHException, OSError, EOFError) as exc:
                        raise HostUnreachable(
                            f"{self.device}: jump host {hop.where} cannot reach {after.where}: "
                            f"{exc or type(exc).__name__}; check the address and that "
                            f"{hop.hostname} may forward to it") from None
                self._client = self._open(self.endpoint, sock)
            except BaseException:
                self._close_locked()
                raise
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
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise LinkDropped(f"{self.device}: the SSH link dropped: {exc or type(exc).__name__}"
                              ) from None
        channel.settimeout(timeout)
        return channel

    def run(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        client = self.client()
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            return stdout.channel.recv_exit_status(), out, err
        except (socket.timeout, paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(f"{self.device}: `{command}` failed: {exc or type(exc).__name__}"
                              ) from None

    def sftp(self) -> paramiko.SFTPClient:
        """An SFTP session. A link that drops while it opens is reconnected (``retries``
        times, with back-off); a device whose sshd refuses SFTP or whose SFTP server exits at
        once is NoSFTP, which waiting cannot heal."""
        last: BaseException | None = None
        for attempt in range(self.connection.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            client = self.client()
            try:
                return client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if self._link_alive(client):
                    raise self._no_sftp(exc) from None
                last = exc
                self.drop()
        raise LinkDropped(f"{self.device}: the SSH link to {self.endpoint.where} dropped while "
                          f"SFTP opened ({last or type(last).__name__}), "
                          f"{self.connection.retries + 1} times; check the network and the "
                          f"device's sshd log (journalctl -u ssh)")

    def _link_alive(self, client: paramiko.SSHClient) -> bool:
        """Whether the SSH connection itself still works (a channel that failed alone is the
        subsystem's doing): probed with a new session channel, as the transport may not have
        noticed a closed socket yet."""
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            return False
        try:
            transport.open_session(timeout=self.connection.connect_timeout_s).close()
        except (paramiko.SSHException, OSError, EOFError):
            return False
        return True

    def _no_sftp(self, exc: BaseException) -> NoSFTP:
        fix = ("in the device's /etc/ssh/sshd_config (`Subsystem sftp internal-sftp`, or the "
               "path of its sftp-server), then restart sshd there (sudo systemctl restart ssh)")
        if "EOF" in str(exc):  # the subsystem started and exited before it spoke SFTP
            return NoSFTP(f"{self.device}: the SFTP server of {self.endpoint.where} exited at "
                          f"once (paramiko: {exc}); hwnas writes the agent's files over SFTP: "
                          f"name an SFTP server that works {fix}")
        return NoSFTP(f"{self.device}: the sshd of {self.endpoint.where} has no SFTP subsystem "
                      f"(it refused the 'sftp' request); hwnas writes the agent's files over "
                      f"SFTP: enable it {fix}")

    def read_file(self, path: str) -> bytes | None:
        """A file of the device (relative paths: from the login folder); None if absent."""
        sftp = self.sftp()
        try:
            with sftp.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeviceError(f"{self.device}: cannot read {path}: {exc}") from None
        except (paramiko.SSHException, EOFError) as exc:
            raise LinkDropped(f"{self.device}: the SSH link dropped while reading {path}: "
                              f"{exc or type(exc).__name__}") from None
        finally:
            sftp.close()

    def sftp_normalize(self, path: str) -> str:
        """The absolute form of a device path (relative paths start at the login folder)."""
        sftp = self.sftp()
        try:
            return sftp.normalize(path)
        except OSError as exc:
            raise DeviceError(f"{self.device}: cannot resolve {path}: {exc}") from None
        except (paramiko.SSHException, EOFError) as exc:
            raise LinkDropped(f"{self.device}: the SSH link dropped while resolving {path}: "
                              f"{exc or type(exc).__name__}") from None
        finally:
            sftp.close()

    def drop(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for client in ([self._client] if self._client else []) + self._hops[::-1]:
            client.close()
        self._client, self._hops = None, []

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
            except (HostUnreachable, LinkDropped) as exc:  # anything else cannot heal by waiting
                last_error = exc
                self.session.drop()
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
        if isinstance(last_error, http.client.RemoteDisconnected):
            raise AgentNotAnswering(f"{self.session.device}: the agent took the connection and "
                                    f"closed it without an answer (starting or stopping?); gave "
                                    f"up after {self.retries + 1} attempts")
        raise DeviceError(f"{self.session.device}: the SSH link kept dropping ({last_error}); "
                          f"gave up after {self.retries + 1} attempts")

    def close(self) -> None:
        self.session.close()

