"""SSH transport against a real OpenSSH server: trust, authentication, tunnels, recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hwnas.config import load_device_profile
from hwnas.errors import DeviceError
from hwnas.records import Artifact
from hwnas.remote.client import AgentClient
from hwnas.remote.device import open_device
from hwnas.remote.ssh import AgentNotRunning, SSHSession, SSHTransport
from hwnas.testing.models import matmul_onnx
from hwnas.testing.sshd import free_port, keygen

HWNAS = str(Path(sys.executable).parent / "hwnas")


def test_measures_through_the_ssh_tunnel(ssh_world, models_dir):
    profile = load_device_profile(ssh_world.profile())
    with open_device(profile) as client:
        assert client.hello()["agent"] == "hwnas-agent"
        artifact = Artifact.from_file(models_dir / "medium.onnx", {}, 0)
        assert client.ensure_model(artifact) is True
        assert client.ensure_model(artifact) is False  # shipped only when missing
        measured = client.measure(profile.measure_request(artifact.sha256))
    assert measured.device == "sshdev" and measured.iterations >= 50


def test_unknown_host_key_is_refused_with_fingerprint_and_command(ssh_world):
    empty = ssh_world.folder / "empty_known_hosts"
    empty.write_text("")
    profile = load_device_profile(ssh_world.profile(known_hosts=empty))
    with pytest.raises(DeviceError) as caught:
        with open_device(profile):
            pass
    message = str(caught.value)
    assert "unknown host key" in message and ssh_world.server.fingerprint() in message
    assert f"ssh-keyscan -p {ssh_world.server.port} 127.0.0.1 >> {empty}" in message
    assert empty.read_text() == ""  # nothing was added behind the user's back


def test_changed_host_key_is_refused(ssh_world):
    other = keygen(ssh_world.folder / "other_host_key")
    key_type, key, *_ = Path(str(other) + ".pub").read_text().split()
    stale = ssh_world.folder / "stale_known_hosts"
    stale.write_text(f"[127.0.0.1]:{ssh_world.server.port} {key_type} {key}\n")
    profile = load_device_profile(ssh_world.profile(known_hosts=stale))
    with pytest.raises(DeviceError, match="CHANGED") as caught:
        with open_device(profile):
            pass
    assert ssh_world.server.fingerprint() in str(caught.value)
    assert "ssh-keygen -f" in str(caught.value)


def test_wrong_user_key_is_refused(ssh_world):
    stranger = keygen(ssh_world.folder / "stranger")
    profile = load_device_profile(ssh_world.profile(identity=stranger))
    with pytest.raises(DeviceError, match="refused authentication.*ssh-copy-id"):
        with open_device(profile):
            pass


def test_agent_not_installed_says_what_to_do(ssh_world):
    profile = load_device_profile(ssh_world.profile(agent_port=free_port()))
    with pytest.raises(AgentNotRunning, match=r"agent not running on sshdev.*hwnas agent install"):
        with open_device(profile):
            pass


def test_unreachable_device(ssh_world):
    profile = load_device_profile(ssh_world.profile())
    ssh_world.server.stop()
    with pytest.raises(DeviceError, match="cannot reach"):
        with open_device(profile):
            pass


def test_ssh_config_alias_and_jump_host(ssh_world):
    config = ssh_world.folder / "ssh_config"
    config.write_text(f"""\
Host jumpbox
    HostName 127.0.0.1
    Port {ssh_world.server.port}
    User {ssh_world.server.user}
    IdentityFile {ssh_world.user_key}

Host orin-lab
    HostName 127.0.0.1
    Port {ssh_world.server.port}
    User {ssh_world.server.user}
    IdentityFile {ssh_world.user_key}
    ProxyJump jumpbox
""")
    path = ssh_world.folder / "alias.yaml"
    path.write_text(f"""\
name: orin-lab
connection:
  kind: ssh
  host: orin-lab
  ssh_config: {config}
  known_hosts: {ssh_world.known_hosts}
  use_ssh_agent: false
  agent_port: {ssh_world.agent.port}
""")
    profile = load_device_profile(path)
    session = SSHSession(profile.name, profile.connection)
    assert session.endpoint.proxy_jump == "jumpbox"
    with open_device(profile) as client:
        assert client.hello()["agent"] == "hwnas-agent"


def test_connection_killed_mid_upload_is_recovered(ssh_world):
    profile = load_device_profile(ssh_world.profile())
    artifact = Artifact.from_file(matmul_onnx(ssh_world.folder / "big.onnx", 52), {}, 0)
    assert artifact.size_bytes > 50e6
    transport = SSHTransport(SSHSession(profile.name, profile.connection), profile.connection.agent_port,
                             retries=3)
    client = AgentClient(transport, profile.name)
    client.hello()
    killed = []

    def cut_the_link() -> None:
        time.sleep(0.3)  # the upload is under way
        killed.append(ssh_world.server.kill_sessions())

    cutter = threading.Thread(target=cut_the_link)
    cutter.start()
    try:
        client.ensure_model(artifact)
    finally:
        cutter.join()
        transport.close()
    assert killed and killed[0] >= 1
    assert transport.reconnects >= 1
    check = AgentClient(SSHTransport(SSHSession(profile.name, profile.connection),
                                     profile.connection.agent_port), profile.name)
    assert check.has_model(artifact.sha256)
    check.transport.close()


def test_devices_check_reports_key_agent_facts_and_calibration(ssh_world):
    done = subprocess.run([HWNAS, "devices", "check", str(ssh_world.profile()), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)[0]
    assert result["ok"] and result["host_key"].endswith(ssh_world.server.fingerprint())
    assert result["agent_version"] and result["calibration_p50_ms"] > 0
    assert "CPUExecutionProvider" in result["runtimes"]["onnxruntime"]
    table = subprocess.run([HWNAS, "devices", "check", str(ssh_world.profile(agent_port=free_port()))],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 1 and "FAILED" in table.stdout and "hwnas agent install" in table.stdout


def test_key_from_the_ssh_agent(ssh_world, monkeypatch):
    """No identity_file: the key is offered by a real ssh-agent, as on a developer laptop."""
    socket_path = ssh_world.folder / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {"SSH_AUTH_SOCK": str(socket_path), "PATH": "/usr/bin:/bin"}
        subprocess.run(["ssh-add", "-q", str(ssh_world.user_key)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        path = ssh_world.folder / "agentkey.yaml"
        path.write_text(f"""\
name: via-agent
connection:
  kind: ssh
  host: 127.0.0.1
  port: {ssh_world.server.port}
  user: {ssh_world.server.user}
  known_hosts: {ssh_world.known_hosts}
  ssh_config: null
  agent_port: {ssh_world.agent.port}
""")
        with open_device(load_device_profile(path)) as client:
            assert client.hello()["agent"] == "hwnas-agent"
    finally:
        agent.terminate()
        agent.wait()


def test_profiles_hold_no_passwords(tmp_path):
    from hwnas.errors import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text("name: x\nconnection: {kind: ssh, host: h, password: hunter2}\n")
    with pytest.raises(ConfigError, match="key 'connection.password': unknown key"):
        load_device_profile(path)
