"""A real OpenSSH server (Debian openssh-server) on a loopback port, with generated host and
user keys: the "device" side of hwnas's SSH tests and benchmarks."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "hwnas-test", "-f", str(path)],
                   check=True)
    return path


class SSHServer:
    """``listen``: the loopback address (127.0.0.1, or ::1 where the machine has IPv6); the
    server logs its logins to ``log`` (LogLevel INFO), so a test can tell which hops a
    connection went through."""

    def __init__(self, folder: Path, authorized_key: Path, listen: str = "127.0.0.1") -> None:
        self.folder = folder
        self.listen = listen
        self.port = free_port(listen)
        self.log = folder / "sshd.log"
        self.host_key = keygen(folder / "ssh_host_ed25519_key")
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_text(Path(str(authorized_key) + ".pub").read_text())
        self.authorized_keys.chmod(0o600)
        self.config = folder / "sshd_config"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress {listen}
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
LogLevel INFO
""")
        self.process: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return getpass.getuser()

    def known_hosts_line(self) -> str:
        key_type, key, *_ = Path(str(self.host_key) + ".pub").read_text().split()
        return f"[{self.listen}]:{self.port} {key_type} {key}\n"

    def accepted_logins(self) -> int:
        """How many logins this server accepted so far (from its own log)."""
        try:
            return self.log.read_text().count("Accepted publickey")
        except FileNotFoundError:
            return 0

    def serve_sftp(self, subsystem: str | None) -> "SSHServer":
        """Restart with another SFTP subsystem: a command (e.g. one that exits at once), or
        None for a server without one, as some minimal device images ship."""
        text = "".join(line for line in self.config.read_text().splitlines(keepends=True)
                       if not line.startswith("Subsystem sftp "))
        self.config.write_text(text + (f"Subsystem sftp {subsystem}\n" if subsystem else ""))
        self.stop()
        return self.start()

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def start(self) -> "SSHServer":
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen([SSHD, "-D", "-E", str(self.log), "-f", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.listen, self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("sshd exited: " + self.log.read_text()[-2000:])
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
        self.process = None


def profile_yaml(name: str, server: SSHServer, identity: Path, known_hosts: Path,
                 agent_port: int, remote_dir: str | None = None, pool: str | None = None,
                 retries: int = 2) -> str:
    lines = [f"name: {name}",
             "connection:",
             "  kind: ssh",
             f"  host: {json.dumps(server.listen)}",
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
        lines.append(f"  remote_dir: {json.dumps(str(remote_dir))}")
    if pool:
        lines.append(f"pool: {pool}")
    lines += ["precisions: [fp32, int8]",
              "budgets: {latency_p90_ms: 2.0, model_size_mb: 1.0}",
              "measurement: {warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50,",
              "              min_seconds: 0.2, rounds: 2}"]
    return "\n".join(lines) + "\n"


class LoopbackDevice:
    """A 'device' on this machine: the real agent behind its own real sshd, and a trusted
    known_hosts file; ``profile()`` writes a device profile that reaches it over SSH. The
    agent's folder is laid out as `hwnas agent install` lays it out (token beside the state),
    and the profile's remote_dir names it, so the controller reads the token over SFTP."""

    def __init__(self, folder: Path, user_key: Path, listen: str = "127.0.0.1") -> None:
        from hwnas.remote.local import LocalAgentProcess

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.user_key = folder, user_key
        self.server = SSHServer(folder, user_key, listen).start()
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(self.server.known_hosts_line())
        self.remote_dir = folder / "device-agent"
        self.agent = LocalAgentProcess(self.remote_dir / "state",
                                       token_file=self.remote_dir / "token")
        self.agent.start()

    def profile(self, name: str = "sshdev", **overrides) -> Path:
        values = dict(identity=self.user_key, known_hosts=self.known_hosts,
                      agent_port=self.agent.port, remote_dir=self.remote_dir)
        values.update(overrides)
        path = self.folder / f"{name}.yaml"
        path.write_text(profile_yaml(name, self.server, values.pop("identity"),
                                     values.pop("known_hosts"), values.pop("agent_port"), **values))
        return path

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()
