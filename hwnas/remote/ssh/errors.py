"""The SSH failures, one DeviceError class each: the class (never the text) decides whether a
request is retried. A host that cannot be reached or a link that dropped is retried; a refused
host key, no usable key, a refused key or a missing SFTP subsystem is not."""

from __future__ import annotations

from hwnas.errors import DeviceError


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
