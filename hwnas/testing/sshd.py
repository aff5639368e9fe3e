"""A real OpenSSH server (Debian openssh-server) on a loopback port, with generated host and
user keys: the "device" side of hwnas's SSH tests and benchmarks."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "hwnas-test", "-f", str(path)],
                   check=True)
    return path


class SSHServer:
    def __init__(self, folder: Path, authorized_key: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.host_key = keygen(folder / "ssh_host_ed25519_key")
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_text(Path(str(authorized_key) + ".pub").read_text())
        self.authorized_keys.chmod(0o600)
        self.config = folder / "sshd_config"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {self.authorized_keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        self.process: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return getpass.getuser()

    def known_hosts_line(self) -> str:
        key_type, key, *_ = Path(str(self.host_key) + ".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def start(self) -> "SSHServer":
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("sshd exited: " + self.process.stderr.read().decode())
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        if self.process is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def kill_sessions(self) -> int:
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill_sessions()
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process is not None:
            for stream in (self.process.stdout, self.process.stderr):
                if stream:
                    stream.close()
        self.process = None


def profile_yaml(name: str, server: SSHServer, identity: Path, known_hosts: Path,
                 agent_port: int, remote_dir: str | None = None, pool: str | None = None,
                 retries: int = 2) -> str:
    lines = [f"name: {name}",
             "connection:",
             "  kind: ssh",
             "  host: 127.0.0.1",
             f"  port: {server.port}",
             f"  user: {server.user}",
             f"  identity_file: {identity}",
             "  use_ssh_agent: false",
             f"  known_hosts: {known_hosts}",
             "  ssh_config: null",
             f"  agent_port: {agent_port}",
             "  connect_timeout_s: 5",
             f"  retries: {retries}"]
    if remote_dir:
        lines.append(f"  remote_dir: {remote_dir}")
    if pool:
        lines.append(f"pool: {pool}")
    lines += ["precisions: [fp32, int8]",
              "budgets: {latency_p90_ms: 2.0, model_size_mb: 1.0}",
              "measurement: {warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50,",
              "              min_seconds: 0.2, rounds: 2}"]
    return "\n".join(lines) + "\n"


class LoopbackDevice:
    """A 'device' on this machine: the real agent behind its own real sshd, and a trusted
    known_hosts file; ``profile()`` writes a device profile that reaches it over SSH."""

    def __init__(self, folder: Path, user_key: Path) -> None:
        from hwnas.remote.local import LocalAgentProcess

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.user_key = folder, user_key
        self.server = SSHServer(folder, user_key).start()
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(self.server.known_hosts_line())
        self.agent = LocalAgentProcess(folder / "agent-state")
        self.agent.start()

    def profile(self, name: str = "sshdev", **overrides) -> Path:
        values = dict(identity=self.user_key, known_hosts=self.known_hosts,
                      agent_port=self.agent.port)
        values.update(overrides)
        path = self.folder / f"{name}.yaml"
        path.write_text(profile_yaml(name, self.server, values.pop("identity"),
                                     values.pop("known_hosts"), values.pop("agent_port"), **values))
        return path

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()
