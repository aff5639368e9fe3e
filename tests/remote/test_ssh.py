"""SSH transport against a real OpenSSH server: trust, authentication, tunnels, recovery."""

from __future__ import annotations

import json
import os
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
from hwnas.remote.ssh import (
    AgentNotAnswering,
    AgentNotRunning,
    HostKeyRejected,
    HostUnreachable,
    KeyRefused,
    NoUsableKey,
    SSHSession,
    SSHTransport,
    parse_destination,
    split_jumps,
)
from hwnas.testing.models import matmul_onnx
from hwnas.testing.sshd import SSHServer, free_port, keygen

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
    with pytest.raises(KeyRefused, match=r"refused the key\(s\).*ssh-copy-id -i \S+stranger.pub"):
        with open_device(profile):
            pass


def test_agent_not_installed_says_what_to_do(ssh_world):
    profile = load_device_profile(ssh_world.profile(agent_port=free_port()))
    with pytest.raises(AgentNotRunning, match=r"agent not running on sshdev.*hwnas agent install"):
        with open_device(profile):
            pass


def test_a_port_that_closes_without_answering_is_an_agent_not_answering(ssh_world):
    """An agent that is shutting down takes the connection and closes it: that is the agent
    (restarting), not the SSH link, and `hwnas agent install` waits it out (a CI failure)."""
    import socket as socket_module

    listener = socket_module.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def close_everything() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            connection.close()

    threading.Thread(target=close_everything, daemon=True).start()
    try:
        profile = load_device_profile(ssh_world.profile())
        transport = SSHTransport(SSHSession("d", profile.connection), listener.getsockname()[1],
                                 retries=1)
        with pytest.raises(AgentNotAnswering, match="closed it without an answer.*2 attempts"):
            transport.request("GET", "/v1/hello")
        assert len(accepted) == 2  # it reached the port both times: the link was fine
    finally:
        listener.close()


def _answering_server(port: int = 0):
    """A bare HTTP server on 127.0.0.1 that answers every GET with 200 (a stand-in agent port)."""
    import http.server

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_agent_that_answered_and_stops_listening_is_waited_for(ssh_world):
    """Its service manager restarts it: for a second or so nothing listens. Refusing at once
    handed a measuring job to another device of the pool (a CI failure); an agent that never
    answered is still refused at once (not installed: the message says so)."""
    profile = load_device_profile(ssh_world.profile())
    server = _answering_server()
    port = server.server_address[1]
    transport = SSHTransport(SSHSession("d", profile.connection), port, retries=4)
    assert transport.request("GET", "/v1/hello").status == 200
    server.shutdown()
    server.server_close()
    back = []
    threading.Timer(1.2, lambda: back.append(_answering_server(port))).start()
    try:
        assert transport.request("GET", "/v1/hello").status == 200
        assert transport.reconnects >= 1  # refused first, then answered by the restarted one
    finally:
        time.sleep(1.5)
        for restarted in back:
            restarted.shutdown()
            restarted.server_close()
    never = SSHTransport(SSHSession("d", profile.connection), free_port(), retries=4)
    started = time.monotonic()
    with pytest.raises(AgentNotRunning, match="hwnas agent install"):
        never.request("GET", "/v1/hello")
    assert never.reconnects == 0 and time.monotonic() - started < 5
    gone = SSHTransport(SSHSession("d", profile.connection), port, retries=1)
    gone.answered = True  # answered once, then never again: refused after its retries
    with pytest.raises(AgentNotRunning, match="answered earlier; still not listening after 2"):
        gone.request("GET", "/v1/hello")


def test_unreachable_device(ssh_world):
    profile = load_device_profile(ssh_world.profile())
    ssh_world.server.stop()
    with pytest.raises(HostUnreachable, match="cannot reach"):
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
  remote_dir: {ssh_world.remote_dir}
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
    client = AgentClient(transport, profile.name, ssh_world.agent.token)
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
                                     profile.connection.agent_port), profile.name,
                        ssh_world.agent.token)
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
  remote_dir: {ssh_world.remote_dir}
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


# --- known_hosts markers (paramiko alone raises InvalidHostKey on either) ---------------


def _host_key_line(ssh_world) -> str:
    return ssh_world.server.known_hosts_line().strip()


def test_revoked_host_key_is_refused_even_when_also_listed_as_trusted(ssh_world):
    name, key_type, key = _host_key_line(ssh_world).split()
    for text in (f"{name} {key_type} {key}\n@revoked * {key_type} {key}\n",
                 f"@revoked {name} {key_type} {key}\n"):
        known = ssh_world.folder / "revoked_known_hosts"
        known.write_text(text)
        profile = load_device_profile(ssh_world.profile(known_hosts=known))
        with pytest.raises(HostKeyRejected, match="marked @revoked") as caught:
            with open_device(profile):
                pass
        assert ssh_world.server.fingerprint() in str(caught.value)
    assert ssh_world.server.accepted_logins() == 0  # refused before any key was offered


def test_cert_authority_lines_are_skipped_with_a_warning(ssh_world, caplog):
    name, key_type, key = _host_key_line(ssh_world).split()
    ca = keygen(ssh_world.folder / "ca_key")
    ca_type, ca_key, *_ = Path(str(ca) + ".pub").read_text().split()
    known = ssh_world.folder / "ca_known_hosts"
    known.write_text(f"@cert-authority *.example.org {ca_type} {ca_key}\n{name} {key_type} {key}\n")
    with caplog.at_level("WARNING", logger="hwnas.remote.ssh"):
        with open_device(load_device_profile(ssh_world.profile(known_hosts=known))) as client:
            assert client.hello()["agent"] == "hwnas-agent"
    assert "1 @cert-authority line(s) skipped" in caplog.text
    only_ca = ssh_world.folder / "only_ca_known_hosts"
    only_ca.write_text(f"@cert-authority * {ca_type} {ca_key}\n")
    with pytest.raises(HostKeyRejected, match="unknown host key.*@cert-authority lines"):
        with open_device(load_device_profile(ssh_world.profile(known_hosts=only_ca))):
            pass


# --- three distinct failures, decided by class ---------------------------------------------


def test_no_key_no_agent_says_so_and_not_the_network(ssh_world, tmp_path):
    """No identity_file, an empty ~/.ssh, no ssh-agent: the CLI says what is missing."""
    home = tmp_path / "empty-home"
    (home / ".ssh").mkdir(parents=True)
    path = tmp_path / "nokey.yaml"
    path.write_text(ssh_world.profile().read_text().replace(f"  identity_file: {ssh_world.user_key}\n", "")
                    .replace("  use_ssh_agent: false\n", ""))
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    done = subprocess.run([HWNAS, "agent", "status", str(path)], capture_output=True, text=True,
                          env=dict(env, HOME=str(home)), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no usable SSH key" in done.stderr and "no ssh-agent" in done.stderr
    assert "network" not in done.stderr
    with_debug = subprocess.run([HWNAS, "--debug", "agent", "status", str(path)],
                                capture_output=True, text=True, env=dict(env, HOME=str(home)),
                                timeout=120)
    assert "Traceback" in with_debug.stderr and "NoUsableKey" in with_debug.stderr


def test_missing_key_refused_key_and_unreachable_host_are_told_apart(ssh_world):
    missing = load_device_profile(ssh_world.profile(identity=ssh_world.folder / "nope"))
    with pytest.raises(NoUsableKey, match="nope does not exist"):
        SSHSession("d", missing.connection).client()
    stranger = load_device_profile(ssh_world.profile(identity=keygen(ssh_world.folder / "other")))
    with pytest.raises(KeyRefused):
        SSHSession("d", stranger.connection).client()
    closed = load_device_profile(ssh_world.profile())
    ssh_world.server.stop()
    with pytest.raises(HostUnreachable):
        SSHSession("d", closed.connection).client()


def test_retries_are_decided_by_error_class(ssh_world):
    stale = ssh_world.folder / "stale"
    stale.write_text(f"[127.0.0.1]:{ssh_world.server.port} "
                     + Path(str(keygen(ssh_world.folder / "k2")) + ".pub").read_text())
    profile = load_device_profile(ssh_world.profile(known_hosts=stale, retries=3))
    refused = SSHTransport(SSHSession("d", profile.connection), ssh_world.agent.port, retries=3)
    with pytest.raises(HostKeyRejected):
        refused.request("GET", "/v1/hello")
    assert refused.reconnects == 0  # a changed key is never retried
    profile = load_device_profile(ssh_world.profile())
    ssh_world.server.stop()
    gone = SSHTransport(SSHSession("d", profile.connection), ssh_world.agent.port, retries=2)
    with pytest.raises(DeviceError, match="gave up after 3 attempts"):
        gone.request("GET", "/v1/hello")
    assert gone.reconnects == 2  # an unreachable host is


def test_importing_the_ssh_module_changes_no_logging_state():
    code = ("import logging\n"
            "def state():\n"
            "    names = ['', 'paramiko', 'paramiko.transport', 'hwnas', 'hwnas.remote.ssh']\n"
            "    return [(logging.getLogger(n).level, len(logging.getLogger(n).handlers),\n"
            "             logging.getLogger(n).propagate, logging.getLogger(n).disabled) for n in names]\n"
            "before = state()\n"
            "import hwnas.remote.ssh, hwnas.remote.device, hwnas.remote.install\n"
            "assert state() == before, (before, state())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- ProxyJump as OpenSSH writes it -----------------------------------------------------------


def test_destinations_and_jump_lists_parse_as_openssh_writes_them():
    assert parse_destination("nvidia@orin-01:2222") == ("nvidia", "orin-01", 2222)
    assert parse_destination("orin-01") == (None, "orin-01", None)
    assert parse_destination("::1") == (None, "::1", None)
    assert parse_destination("pi@[::1]:2200") == ("pi", "::1", 2200)
    assert parse_destination("ssh://a@b:7") == ("a", "b", 7)
    assert split_jumps("u@a:1, b,c:3") == ("u@a:1", "b", "c:3")
    assert split_jumps("none") == () and split_jumps(None) == ()


@pytest.fixture()
def two_jump_hosts(ssh_world):
    servers = []
    for name in ("jump1", "jump2"):
        folder = ssh_world.folder / name
        folder.mkdir()
        servers.append(SSHServer(folder, ssh_world.user_key).start())
    with ssh_world.known_hosts.open("a") as known:
        for server in servers:
            known.write(server.known_hosts_line())
    yield servers
    for server in servers:
        server.stop()


def test_two_hop_proxy_jump_with_the_profile_key_on_every_hop(ssh_world, two_jump_hosts):
    first, second = two_jump_hosts
    user = ssh_world.server.user
    path = ssh_world.profile()
    path.write_text(path.read_text().replace(
        "connection:\n", f"connection:\n  jump_host: {user}@127.0.0.1:{first.port},"
                         f"{user}@127.0.0.1:{second.port}\n"))
    profile = load_device_profile(path)
    session = SSHSession(profile.name, profile.connection)
    assert [hop.port for hop in session.jumps] == [first.port, second.port]
    assert all(hop.identity_files == (str(ssh_world.user_key),) for hop in session.jumps)
    session.close()
    with open_device(profile) as client:
        assert client.hello()["agent"] == "hwnas-agent"
    # each hop was logged into once: the connection went through both
    assert first.accepted_logins() == 1 and second.accepted_logins() == 1
    assert ssh_world.server.accepted_logins() == 1


def test_a_hop_that_refuses_the_key_is_named(ssh_world, two_jump_hosts):
    first, second = two_jump_hosts
    first.authorized_keys.write_text(Path(str(keygen(ssh_world.folder / "x")) + ".pub").read_text())
    path = ssh_world.profile()
    path.write_text(path.read_text().replace(
        "connection:\n", f"connection:\n  jump_host: 127.0.0.1:{first.port},127.0.0.1:{second.port}\n"))
    with pytest.raises(KeyRefused, match=rf"127.0.0.1:{first.port} \(jump host\) refused"):
        with open_device(load_device_profile(path)):
            pass


def test_ipv6_loopback_device_and_jump(tmp_path):
    from hwnas.testing.sshd import LoopbackDevice

    device = LoopbackDevice(tmp_path / "v6", keygen(tmp_path / "id_v6"), listen="::1")
    try:
        profile = load_device_profile(device.profile("v6dev"))
        assert profile.connection.host == "::1"
        with open_device(profile) as client:
            assert client.hello()["agent"] == "hwnas-agent"
        path = device.profile("v6jump")
        path.write_text(path.read_text().replace(
            "connection:\n", f"connection:\n  jump_host: '{device.server.user}@[::1]:"
                             f"{device.server.port}'\n"))
        with open_device(load_device_profile(path)) as client:
            assert client.hello()["agent"] == "hwnas-agent"
        assert device.server.accepted_logins() == 3
    finally:
        device.stop()


# --- a device whose sshd serves no SFTP --------------------------------------------------------


def one_line_exit_2(args: list[str]) -> str:
    done = subprocess.run([HWNAS, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_device_without_sftp_is_one_clear_line(ssh_world):
    """A minimal image whose sshd_config has no `Subsystem sftp` line: every verb that needs
    the agent's files says so, and how to enable it, instead of paramiko's 'Channel closed.'"""
    ssh_world.server.serve_sftp(None)
    profile = ssh_world.profile()
    for verb in ("status", "install"):
        line = one_line_exit_2(["agent", verb, str(profile)])
        assert "has no SFTP subsystem" in line and "Subsystem sftp internal-sftp" in line, line
        assert "restart sshd" in line
    done = subprocess.run([HWNAS, "devices", "check", str(profile)], capture_output=True,
                          text=True, timeout=180)
    # a check reports each device (the others are still checked): FAILED, with the reason
    assert done.returncode == 1 and done.stderr == "", done.stderr
    assert "FAILED" in done.stdout and "has no SFTP subsystem" in done.stdout


def test_an_sftp_server_that_exits_at_once_is_one_clear_line(ssh_world):
    ssh_world.server.serve_sftp("/bin/true")
    line = one_line_exit_2(["agent", "status", str(ssh_world.profile())])
    assert "SFTP server" in line and "exited at once" in line and "sshd_config" in line, line


def test_a_link_dropped_while_sftp_opens_is_retried_then_one_clear_line(ssh_world):
    """The SSH connection dies the moment SFTP starts (its sshd session process is killed):
    a dropped link, reconnected and retried, then named as such; never 'no SFTP'."""
    ssh_world.server.serve_sftp("kill -9 $PPID")  # run by the login shell: $PPID is its sshd
    profile = load_device_profile(ssh_world.profile())
    session = SSHSession(profile.name, profile.connection)
    try:
        with pytest.raises(DeviceError, match="dropped while SFTP opened.*3 times"):
            session.read_file("anything")
    finally:
        session.close()
    assert ssh_world.server.accepted_logins() == 3  # reconnected for each attempt
    line = one_line_exit_2(["agent", "status", str(ssh_world.profile())])
    assert "dropped while SFTP opened" in line and "SFTP subsystem" not in line, line
    done = subprocess.run([HWNAS, "devices", "check", str(ssh_world.profile())],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and done.stderr == "" and "dropped while SFTP" in done.stdout
