"""SSH to a device with paramiko: strict host keys (with OpenSSH's @revoked markers honoured),
keys or ssh-agent only, ProxyJump chains, ~/.ssh/config aliases, and the agent reached through
a direct-tcpip channel to the device's own 127.0.0.1.

destination.py (where to connect), host_keys.py (which host keys are trusted), user_keys.py
(which keys can be offered), session.py (the connection, commands, SFTP), tunnel.py (HTTP to
the agent over it), errors.py (one DeviceError class per failure; the class decides retries).
"""

from hwnas.remote.ssh.destination import Endpoint, parse_destination, resolve, split_jumps
from hwnas.remote.ssh.errors import (
    AgentNotAnswering,
    AgentNotRunning,
    HostKeyRejected,
    HostUnreachable,
    KeyRefused,
    LinkDropped,
    NoSFTP,
    NoUsableKey,
)
from hwnas.remote.ssh.host_keys import KnownHosts, fingerprint
from hwnas.remote.ssh.session import SSHSession
from hwnas.remote.ssh.tunnel import SSHTransport

__all__ = ["AgentNotAnswering", "AgentNotRunning", "Endpoint", "HostKeyRejected",
           "HostUnreachable", "KeyRefused", "KnownHosts", "LinkDropped", "NoSFTP", "NoUsableKey",
           "SSHSession", "SSHTransport", "fingerprint", "parse_destination", "resolve",
           "split_jumps"]
