"""One SSH connection to a device with paramiko: through its ProxyJump hosts, with strict host
keys (host_keys.py) and keys or the ssh-agent only (user_keys.py); direct-tcpip channels to the
device's own 127.0.0.1, commands, and the SFTP reads and writes the agent's install needs.

Importing this package changes no logging state: the `hwnas` CLI quiets paramiko's own log
(each failure already becomes one clear message, errors.py), `--debug` shows it.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paramiko

from hwnas.config.models import SSHConnection
from hwnas.errors import DeviceError
from hwnas.remote.ssh.destination import Endpoint, resolve, split_jumps, ssh_config
from hwnas.remote.ssh.errors import (
    AgentNotRunning,
    HostUnreachable,
    KeyRefused,
    LinkDropped,
    NoSFTP,
    NoUsableKey,
)
from hwnas.remote.ssh.host_keys import KnownHosts, RefuseUnknown, changed_key
from hwnas.remote.ssh.user_keys import copy_id_command, key_problems

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class SSHSession:
    """One SSH connection to a device (through its jump hosts, if any); reconnects on demand."""

    def __init__(self, device: str, connection: SSHConnection) -> None:
        self.device = device
        self.connection = connection
        self.config = ssh_config(connection.ssh_config)
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

    def _open(self, endpoint: Endpoint, sock: Any = None, role: str = "") -> paramiko.SSHClient:
        where = f"{endpoint.where}{role}"
        problems = key_problems(endpoint, self.connection.use_ssh_agent)
        if problems:
            raise NoUsableKey(
                f"{self.device}: no usable SSH key for {where}: {'; '.join(problems)}. Make one "
                f"(ssh-keygen -t ed25519), install it on the device ({copy_id_command(endpoint)}) "
                f"and name it in the profile (identity_file) or load it into the ssh-agent")
        client = paramiko.SSHClient()
        self.known_hosts.install(client)
        client.set_missing_host_key_policy(RefuseUnknown(self.device, self.known_hosts, endpoint))
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
            raise changed_key(self.device, self.known_hosts, endpoint, exc) from None
        except paramiko.AuthenticationException:
            client.close()
            keys = ", ".join(endpoint.identity_files) or "the ssh-agent's and default keys"
            raise KeyRefused(
                f"{self.device}: {where} refused the key(s) ({keys}); install your public key on "
                f"the device ({copy_id_command(endpoint)}) or set identity_file in the profile"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise HostUnreachable(f"{self.device}: cannot reach {where}: {exc or type(exc).__name__}"
                                  f"; check the address, the network and that sshd runs there"
                                  ) from None
        return client

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
