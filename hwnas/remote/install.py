"""`hwnas agent install | status | logs | stop | uninstall PROFILE` over SSH/SFTP.

Install uploads the hwnas-agent wheel built from agents/, makes a virtual environment with
the device's own Python (>= 3.8) and package index, and starts the agent under a systemd
user unit, or, where systemd is absent, under a small supervisor loop that restarts it on
failure. Running install again upgrades in place and is otherwise a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwnas_agent import __version__ as AGENT_VERSION

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.errors import ConfigError, DeviceError
from hwnas.remote.client import AgentClient
from hwnas.remote.ssh import AgentNotRunning, SSHSession, SSHTransport

AGENT_SOURCE = Path(__file__).resolve().parents[2] / "agents"
PYTHONS = ("python3", "python3.13", "python3.12", "python3.11", "python3.10", "python3.9",
           "python3.8")
UNIT = ".config/systemd/user/hwnas-agent.service"
SUPERVISOR = """#!/bin/sh
# Restarts the agent when it exits, like systemd's Restart=on-failure; `stop` ends it.
cd "$(dirname "$0")"
while true; do
  venv/bin/python -m hwnas_agent serve --host 127.0.0.1 --port {port} --state-dir state >> agent.log 2>&1
  code=$?
  [ -f stop ] && exit 0
  echo "hwnas-agent exited with status $code; restarting in 2 s" >> agent.log
  sleep 2
done
"""


def ssh_connection(profile: DeviceProfile) -> SSHConnection:
    if not isinstance(profile.connection, SSHConnection):
        raise ConfigError(f"{profile.name}: connection.kind is {profile.connection.kind}; the "
                          f"local agent is started by hwnas itself and needs no install")
    return profile.connection


def agent_wheel(cache: Path) -> Path:
    """The hwnas-agent wheel built from agents/ (cached by the sources' hash)."""
    digest = hashlib.sha256()
    sources = [p for pattern in ("hwnas_agent/**/*.py", "hwnas_agent/*.service", "*.toml", "*.md")
               for p in AGENT_SOURCE.glob(pattern)]
    for path in sorted(sources):
        digest.update(str(path.relative_to(AGENT_SOURCE)).encode())
        digest.update(path.read_bytes())
    folder = cache / "agent-wheels" / digest.hexdigest()[:16]
    wheels = sorted(folder.glob("hwnas_agent-*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as build:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                               "--no-build-isolation", "-w", build, str(AGENT_SOURCE)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise DeviceError(f"building the hwnas-agent wheel failed: {done.stderr[-800:]}")
        built = next(Path(build).glob("hwnas_agent-*.whl"))
        target = folder / built.name
        target.write_bytes(built.read_bytes())
    return target


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    manager: str  # systemd | supervisor | none
    running: bool
    agent_version: str | None
    detail: str


class RemoteAgent:
    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.connection = ssh_connection(profile)
        self.session = SSHSession(profile.name, self.connection)
        self.dir = self.connection.remote_dir.rstrip("/")

    def close(self) -> None:
        self.session.close()

    def _run(self, command: str, timeout: float = 120.0, check: bool = True) -> str:
        code, out, err = self.session.run(command, timeout)
        if check and code != 0:
            raise DeviceError(f"{self.profile.name}: `{command}` exited {code}: "
                              f"{(err or out).strip()[-800:]}")
        return out

    def python(self) -> str:
        probe = "; ".join(f"command -v {p} >/dev/null 2>&1 && {p} -c 'import sys; "
                          f"sys.exit(sys.version_info < (3, 8))' 2>/dev/null && echo {p} && exit 0"
                          for p in PYTHONS)
        found = self._run(f"sh -c {shlex.quote(probe + '; exit 1')}", check=False).strip()
        if not found:
            raise DeviceError(f"{self.profile.name}: no Python >= 3.8 on the device; install "
                              f"python3 and python3-venv there")
        return found.splitlines()[0]

    def _has_unit(self) -> bool:
        """Whether install put the agent under a systemd user unit."""
        return self._run(f"test -f {UNIT} && echo yes", check=False).strip() == "yes"

    def _has_systemd(self) -> bool:
        code, _, _ = self.session.run("systemctl --user show-environment >/dev/null 2>&1", 30)
        return code == 0

    def install(self, cache: Path, log=print) -> AgentStatus:
        wheel = agent_wheel(cache)
        wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        d = shlex.quote(self.dir)
        installed = self._run(f"cat {d}/dist/installed.sha256 2>/dev/null", check=False).strip()
        if installed != wheel_sha:
            python = self.python()
            log(f"{self.profile.name}: installing hwnas-agent {AGENT_VERSION} with {python}")
            self._run(f"mkdir -p {d}/dist {d}/state")
            sftp = self.session.sftp()
            try:
                sftp.put(str(wheel), f"{self.dir}/dist/{wheel.name}")
            finally:
                sftp.close()
            self._run(f"test -x {d}/venv/bin/python || {python} -m venv {d}/venv", 300)
            self._run(f"{d}/venv/bin/python -m pip install -q --upgrade "
                      f"{d}/dist/{shlex.quote(wheel.name)}", 1800)
            self._run(f"echo {wheel_sha} > {d}/dist/installed.sha256")
            self.stop()
        else:
            log(f"{self.profile.name}: hwnas-agent {AGENT_VERSION} already installed")
        status = self.status()
        if not status.running:
            self.start()
        return self.wait_ready()

    def start(self) -> None:
        d, port = shlex.quote(self.dir), self.connection.agent_port
        if self._has_systemd():
            unit = self._run(f"{d}/venv/bin/python -m hwnas_agent unit --port {port} "
                             f"--state-dir \"$HOME\"/{d}/state")
            self._run(f"mkdir -p .config/systemd/user && cat > {UNIT} <<'EOF'\n{unit}EOF")
            self._run("systemctl --user daemon-reload && systemctl --user enable --now "
                      "hwnas-agent && systemctl --user restart hwnas-agent")
            return
        self._run(f"cat > {d}/supervise.sh <<'EOF'\n{SUPERVISOR.format(port=port)}EOF")
        self._run(f"rm -f {d}/stop; setsid nohup sh {d}/supervise.sh >/dev/null 2>&1 </dev/null & "
                  f"echo $! > {d}/supervisor.pid")

    def stop(self) -> None:
        d = shlex.quote(self.dir)
        if self._has_unit():
            self._run("systemctl --user stop hwnas-agent", check=False)
        self._run(f"if test -f {d}/supervisor.pid; then touch {d}/stop; "
                  f"kill -TERM -- -$(cat {d}/supervisor.pid) 2>/dev/null; "
                  f"rm -f {d}/supervisor.pid; fi", check=False)

    def status(self) -> AgentStatus:
        d = shlex.quote(self.dir)
        if self._has_unit():
            manager = "systemd"
            running = self._run("systemctl --user is-active hwnas-agent",
                                check=False).strip() == "active"
        elif self._run(f"test -f {d}/supervisor.pid && echo yes", check=False).strip() == "yes":
            manager = "supervisor"
            running = self._run(f"kill -0 $(cat {d}/supervisor.pid) 2>/dev/null && echo yes",
                                check=False).strip() == "yes"
        else:
            manager, running = "none", False
        version, detail = None, "not running"
        try:
            hello = self.client().hello()
            version, detail = hello["agent_version"], f"answering on 127.0.0.1:{self.connection.agent_port}"
        except AgentNotRunning as exc:
            detail = str(exc)
        return AgentStatus(manager, running, version, detail)

    def client(self) -> AgentClient:
        return AgentClient(SSHTransport(self.session, self.connection.agent_port, retries=0),
                           self.profile.name)

    def wait_ready(self, timeout_s: float = 60.0) -> AgentStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status.agent_version is not None:
                return status
            time.sleep(0.5)
        raise DeviceError(f"{self.profile.name}: the agent did not answer within {timeout_s:.0f} s;"
                          f" see `hwnas agent logs {self.profile.name}`")

    def logs(self, lines: int = 50) -> str:
        d = shlex.quote(self.dir)
        if self._has_unit():
            return self._run(f"journalctl --user -u hwnas-agent -n {lines} --no-pager", check=False)
        return self._run(f"tail -n {lines} {d}/agent.log 2>/dev/null || echo 'no log yet'",
                         check=False)

    def uninstall(self) -> None:
        self.stop()
        if self._has_unit():
            self._run(f"systemctl --user disable hwnas-agent; rm -f {UNIT}; "
                      "systemctl --user daemon-reload", check=False)
        self._run(f"rm -rf {shlex.quote(self.dir)}")
