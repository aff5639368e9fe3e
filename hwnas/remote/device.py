"""Open a device named by a profile: a connected, version-checked, authenticated AgentClient."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from hwnas_agent.protocol import NO_POWER

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.errors import DeviceError
from hwnas.remote.client import AgentClient
from hwnas.remote.local import LocalAgentProcess
from hwnas.remote.ssh import SSHSession, SSHTransport

TOKEN_NAME = "token"
CONFIG_NAME = "agent.json"


class AgentNotInstalled(DeviceError):
    """SSH works but the device has no agent token: the agent was never installed there."""


def power_sources(profile: DeviceProfile) -> dict[str, dict[str, Any]]:
    """The agent configuration's power sources for this profile: the profile's source under
    its kind's name (the name is all a measure request carries)."""
    power = profile.power
    if power.source == NO_POWER:
        return {}
    return {power.source: {"kind": power.source, "options": dict(power.options)}}


def agent_config(profile: DeviceProfile) -> dict[str, Any]:
    """What `hwnas agent install` writes to the device's agent.json (paths relative to it)."""
    connection = profile.connection
    assert isinstance(connection, SSHConnection)
    return {"host": "127.0.0.1", "port": connection.agent_port, "state_dir": "state",
            "token_file": TOKEN_NAME, "power_sources": power_sources(profile)}


def remote_folder(connection: SSHConnection) -> str:
    """The agent's folder on the device; relative paths (and `~/...`) start at the login's
    home, for SFTP and for the shell alike."""
    folder = connection.remote_dir.strip().rstrip("/")
    return folder[2:] if folder.startswith("~/") else folder


def remote_path(connection: SSHConnection, name: str) -> str:
    return f"{remote_folder(connection)}/{name}"


def read_remote_token(session: SSHSession, connection: SSHConnection) -> str:
    path = remote_path(connection, TOKEN_NAME)
    data = session.read_file(path)
    if data is None:
        raise AgentNotInstalled(f"agent not installed on {session.device}: it has no agent token "
                                f"at {path}; run `hwnas agent install PROFILE`")
    return data.decode("utf-8", "replace").strip()


def check_power_config(client: AgentClient, profile: DeviceProfile, hello: dict[str, Any]) -> None:
    """A figure labelled with the profile's power source must come from that source."""
    wanted = power_sources(profile)
    configured = hello.get("power_sources") or {}
    for name, spec in wanted.items():
        if configured.get(name) != spec:
            raise DeviceError(
                f"{profile.name}: the agent's power source {name!r} is "
                f"{configured.get(name) or 'not configured'}, the profile says {spec}; run "
                f"`hwnas agent install PROFILE` to write the profile's power section to the device")


@contextlib.contextmanager
def open_device(profile: DeviceProfile, state_dir: Path | None = None,
                log_path: Path | None = None) -> Iterator[AgentClient]:
    """A connected, version-checked client; the local agent is started and stopped here
    (``state_dir``: its models and jobs; ``log_path``: where its stderr goes)."""
    connection = profile.connection
    if isinstance(connection, SSHConnection):
        session = SSHSession(profile.name, connection)
        try:
            token = read_remote_token(session, connection)
            client = AgentClient(SSHTransport(session, connection.agent_port, connection.retries),
                                 profile.name, token,
                                 f"read over SSH from {remote_path(connection, TOKEN_NAME)}")
            check_power_config(client, profile, client.hello())
            yield client
        finally:
            session.close()
        return
    agent = LocalAgentProcess(state_dir, power_sources=power_sources(profile), log_path=log_path)
    agent.start()
    try:
        client = agent.client(profile.name)
        client.hello()
        yield client
    finally:
        agent.stop()
