"""Open a device named by a profile: a connected, version-checked AgentClient."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.remote.client import AgentClient
from hwnas.remote.local import LocalAgentProcess
from hwnas.remote.ssh import SSHSession, SSHTransport
from hwnas.remote.transport import LoopbackTransport


@contextlib.contextmanager
def open_device(profile: DeviceProfile, state_dir: Path | None = None) -> Iterator[AgentClient]:
    """A connected, version-checked client; the local agent is started and stopped here."""
    connection = profile.connection
    if isinstance(connection, SSHConnection):
        session = SSHSession(profile.name, connection)
        client = AgentClient(SSHTransport(session, connection.agent_port, connection.retries),
                             profile.name)
        try:
            client.hello()
            yield client
        finally:
            session.close()
        return
    agent = LocalAgentProcess(state_dir)
    port = agent.start()
    try:
        client = AgentClient(LoopbackTransport(port, description=f"agent of {profile.name}"),
                             profile.name)
        client.hello()
        yield client
    finally:
        agent.stop()
