from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hwnas.remote.local import LocalAgentProcess
from hwnas.testing.sshd import SSHServer, keygen, profile_yaml


@dataclasses.dataclass
class SSHWorld:
    folder: Path
    server: SSHServer
    user_key: Path
    known_hosts: Path
    agent: LocalAgentProcess

    def profile(self, name: str = "sshdev", **overrides) -> Path:
        values = dict(identity=self.user_key, known_hosts=self.known_hosts,
                      agent_port=self.agent.port)
        values.update(overrides)
        path = self.folder / f"{name}.yaml"
        path.write_text(profile_yaml(name, self.server, values.pop("identity"),
                                     values.pop("known_hosts"), values.pop("agent_port"), **values))
        return path


@pytest.fixture()
def ssh_world(tmp_path):
    """A real sshd on loopback with a trusted host key, and the real agent behind it on the
    'device' (this machine's 127.0.0.1)."""
    user_key = keygen(tmp_path / "id_ed25519")
    server = SSHServer(tmp_path, user_key).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    agent = LocalAgentProcess(tmp_path / "agent-state")
    agent.start()
    try:
        yield SSHWorld(tmp_path, server, user_key, known_hosts, agent)
    finally:
        agent.stop()
        server.stop()
