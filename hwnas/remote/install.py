"""`hwnas agent install | status | logs | stop | uninstall PROFILE` over SSH/SFTP.

Install first learns the device's platform (machine, Python, glibc, Jetson) and, unless the
profile says `agent_install: {index: device}`, downloads the agent's dependency wheels for
exactly that platform on the controller (wheels.py): a dependency without a wheel there fails
before anything on the device changes. It then ships what the device lacks over SFTP
(ship.py), makes a virtual environment with the device's own Python (>= 3.8; with the
system's site packages on a Jetson, for JetPack's tensorrt), installs with --no-index, writes the agent's configuration file
(agent.json: port, power source from the profile) and its secret token (created once), both
mode 0600, and starts the agent under a systemd user unit, or, where systemd is absent, under
a small supervisor loop that restarts it on failure. Running install again upgrades in place,
rewrites a changed configuration, and is otherwise a no-op.

Nothing from the profile is pasted into a shell unquoted: files are written over SFTP (never
heredocs), every path in a command is quoted, and everything lands inside the remote folder
except the systemd unit (in ~/.config/systemd/user, the one place systemd looks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paramiko
from hwnas_agent import __version__ as AGENT_VERSION

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.errors import ConfigError, DeviceError
from hwnas.remote.client import AgentClient
from hwnas.remote.device import CONFIG_NAME, TOKEN_NAME, agent_config, remote_folder
from hwnas.remote.runtime_needs import PROVIDER_EXTRAS, runtime_source, runtime_use
from hwnas.remote.ship import Shipped, sync_folder
from hwnas.remote.ssh import AgentNotAnswering, AgentNotRunning, SSHSession, SSHTransport
from hwnas.remote.wheels import (PROBE, DevicePlatform, WheelSet, dependencies, unfit_extra,
                                 wheel_set)

AGENT_SOURCE = Path(__file__).resolve().parents[2] / "agents"
PYTHONS = ("python3", "python3.13", "python3.12", "python3.11", "python3.10", "python3.9",
           "python3.8")
UNIT_DIR = ".config/systemd/user"
UNIT = f"{UNIT_DIR}/hwnas-agent.service"
# no value of the profile in it: it runs from its own folder and reads agent.json
SUPERVISOR = """#!/bin/sh
# Restarts the agent when it exits, like systemd's Restart=on-failure; `stop` ends it.
cd -- "$(dirname -- "$0")" || exit 1
while true; do
  venv/bin/python -m hwnas_agent serve --config agent.json >> agent.log 2>&1
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


def runtime_extras(profile: DeviceProfile) -> list[str]:
    """The hwnas-agent extras the profile's runtime needs (QNN: the onnxruntime-qnn plugin),
    by runtime_needs.PROVIDER_EXTRAS: one table of which extra provides which provider."""
    return sorted({PROVIDER_EXTRAS[p] for p in profile.runtime.execution_providers
                   if p in PROVIDER_EXTRAS})


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    agent_wheel: Path
    python: str
    platform: DevicePlatform
    extras: list[str]
    wheels: WheelSet | None  # None: the device's own index
    system_site: bool
    # None: the agent wheel with its dependencies; else exactly these, and the agent without
    # its own (the device's onnxruntime stands in for PyPI's)
    only: list[str] | None = None

    @property
    def stamp(self) -> str:
        """What is installed, as one hash: equal stamps mean nothing to do."""
        return hashlib.sha256(json.dumps([
            hashlib.sha256(self.agent_wheel.read_bytes()).hexdigest(), self.python,
            self.extras, self.wheels.sha256 if self.wheels else "index", self.system_site]
            + ([] if self.only is None else [self.only]),
            sort_keys=True).encode()).hexdigest()


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
        self.dir = remote_folder(self.connection)
        self.q = shlex.quote(self.dir)  # the folder, as a shell word
        self.shipped = Shipped((), 0, ())  # what the last install copied to the device

    def close(self) -> None:
        self.session.close()

    def _run(self, command: str, timeout: float = 120.0, check: bool = True) -> str:
        code, out, err = self.session.run(command, timeout)
        if check and code != 0:
            raise DeviceError(f"{self.profile.name}: `{command}` exited {code}: "
                              f"{(err or out).strip()[-800:]}")
        return out

    def _path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def _write(self, name: str, text: str, mode: int = 0o644) -> None:
        """A file in the remote folder, written over SFTP: its content never meets a shell.
        Written beside and renamed, with its mode set before any content arrives."""
        target = self._path(name)
        tmp = f"{target}.tmp-{secrets.token_hex(4)}"
        sftp = self.session.sftp()
        try:
            with sftp.open(tmp, "wx") as handle:
                sftp.chmod(tmp, mode)
                handle.write(text.encode("utf-8"))
            sftp.posix_rename(tmp, target)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise DeviceError(f"{self.profile.name}: cannot write {target}: {exc}") from None
        finally:
            sftp.close()

    def python(self) -> str:
        if self.profile.agent_install.python:
            return self.profile.agent_install.python
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

    def _configure(self) -> bool:
        """agent.json from the profile and the token (kept if present), both 0600; True if the
        configuration changed (the agent must restart to read it)."""
        config = json.dumps(agent_config(self.profile), indent=1, sort_keys=True) + "\n"
        changed = self.session.read_file(self._path(CONFIG_NAME)) != config.encode("utf-8")
        if changed:
            self._write(CONFIG_NAME, config, 0o600)
        token = (self.session.read_file(self._path(TOKEN_NAME)) or b"").strip()
        if len(token) < 32:
            self._write(TOKEN_NAME, secrets.token_hex(32) + "\n", 0o600)
            changed = True
        # an older or hand-made file may be readable by others: the agent refuses that
        self._run(f"chmod 600 -- {self.q}/{CONFIG_NAME} {self.q}/{TOKEN_NAME}")
        return changed

    def platform(self, python: str) -> DevicePlatform:
        """What the device is, as the interpreter the venv will use sees it (reads only)."""
        code, out, err = self.session.run(f"{shlex.quote(python)} -c {shlex.quote(PROBE)}", 60)
        if code != 0:
            raise DeviceError(f"{self.profile.name}: cannot run {python} on the device "
                              f"({(err or out).strip()[-300:]}); install python3 and python3-venv "
                              f"there, or name a working one in agent_install.python")
        return DevicePlatform.parse(self.profile.name, out)

    def plan(self, cache: Path, log=print) -> InstallPlan:
        """Everything install will put on the device, decided before anything is changed there:
        a platform without wheels, or an extra its Python cannot have, fails here."""
        options = self.profile.agent_install
        wheel = agent_wheel(cache)
        python = self.python()
        platform = self.platform(python)
        if platform.python < (3, 8):
            raise DeviceError(f"{self.profile.name}: {python} is Python {platform.python[0]}."
                              f"{platform.python[1]}; the agent needs >= 3.8: name another in "
                              f"agent_install.python or install python3.8+ on the device")
        system_site = (platform.jetson if options.system_site_packages is None
                       else options.system_site_packages)
        source = runtime_source(self.profile, platform, system_site, {
            extra for extra in runtime_extras(self.profile)
            if unfit_extra(platform, wheel, extra) is None})
        if source.note:
            log(f"{self.profile.name}: {source.note}")
        extras = sorted(set(options.extras) | set(source.extras))
        only = None if source.own_onnxruntime else \
            dependencies(wheel, platform, extras, {"onnxruntime"}, source.constraints)
        wheels = (wheel_set(self.profile.name, platform, wheel, extras, cache, log, only)
                  if options.index == "controller" else None)
        return InstallPlan(wheel, python, platform, extras, wheels, system_site, only)

    def install(self, cache: Path, log=print) -> AgentStatus:
        plan = self.plan(cache, log)
        self.shipped = Shipped((), 0, ())
        self._run(f"mkdir -p -- {self.q}/dist {self.q}/wheels {self.q}/state && "
                  f"chmod 700 -- {self.q}")
        installed = (self.session.read_file(self._path("installed.sha256")) or b"").strip()
        restart = self._configure()
        if installed.decode() != plan.stamp:
            where = ("wheels shipped from the controller" if plan.wheels else "the device's index")
            log(f"{self.profile.name}: installing hwnas-agent {AGENT_VERSION} with "
                f"{plan.python} ({plan.platform.describe()}) from {where}")
            self._ship(plan)
            log(f"{self.profile.name}: shipped {len(self.shipped.files)} file(s), "
                f"{self.shipped.bytes / 1e6:.1f} MB")
            self._venv(plan)
            self._pip_install(plan)
            self._write("installed.sha256", plan.stamp + "\n")
            restart = True
        else:
            changed = "; its configuration (agent.json) changed: restarting it" if restart else ""
            log(f"{self.profile.name}: hwnas-agent {AGENT_VERSION} already installed{changed}")
        if restart:
            self.stop()
        status = self.status()
        if not status.running:
            self.start()
        status = self.wait_ready()
        uses, missing = runtime_use(self.profile, self.client().facts())
        if missing:
            raise DeviceError(missing + " (the agent is installed and running)")
        log(f"{self.profile.name}: measures with {uses}")
        return status

    def _ship(self, plan: InstallPlan) -> None:
        wheel_sha = hashlib.sha256(plan.agent_wheel.read_bytes()).hexdigest()
        agent = sync_folder(self.session, plan.python, self._path("dist"),
                            {plan.agent_wheel: wheel_sha})
        deps = sync_folder(self.session, plan.python, self._path("wheels"),
                           {p: plan.wheels.sha256[p.name] for p in plan.wheels.paths}
                           if plan.wheels else {})
        self.shipped = Shipped(agent.files + deps.files, agent.bytes + deps.bytes,
                               agent.removed + deps.removed)

    def _venv(self, plan: InstallPlan) -> None:
        """The venv, (re)made when absent or when whether it sees the system's site packages
        changed (a Jetson's tensorrt lives there; the venv's own packages come first)."""
        cfg = (self.session.read_file(self._path("venv/pyvenv.cfg")) or b"").decode()
        wanted = f"include-system-site-packages = {str(plan.system_site).lower()}"
        if cfg and wanted not in cfg:
            self.stop()  # it runs from that venv
            self._run(f"rm -rf -- {self.q}/venv")
        flag = " --system-site-packages" if plan.system_site else ""
        self._run(f"test -x {self.q}/venv/bin/python || {shlex.quote(plan.python)} -m venv"
                  f"{flag} -- {self.q}/venv", 300)

    def _pip_install(self, plan: InstallPlan) -> None:
        # from inside the folder: pip reads a ';' in a requirement's path as a marker; its
        # cache and log too stay inside (uninstall removes it all)
        pip = (f"cd -- {self.q}/dist && PIP_CACHE_DIR=../pip-cache ../venv/bin/python -m pip "
               f"install -q --disable-pip-version-check --log ../pip-install.log")
        agent = shlex.quote(f"./{plan.agent_wheel.name}" +
                            (f"[{','.join(plan.extras)}]" if plan.extras else ""))
        # with system site packages, the venv gets its own copy of every pinned dependency:
        # a system numpy that happens to satisfy the range must not stand in for ours
        own = " --ignore-installed" if plan.system_site else ""
        if plan.wheels:
            # exactly the shipped set: no pip.conf, no PIP_* variable of the device adds an
            # index, a find-links folder or a constraint (PIP_CONFIG_FILE=/dev/null: no files)
            pip = (f"cd -- {self.q}/dist && PIP_CONFIG_FILE=/dev/null ../venv/bin/python -m pip "
                   f"--isolated install -q --disable-pip-version-check --cache-dir ../pip-cache "
                   f"--log ../pip-install.log")
            pip = f"{pip} --no-index --find-links ../wheels"
            self._run(f"{pip} --upgrade pip", 600)  # an old venv pip cannot read PEP 600 tags
        if plan.only is None:
            self._run(f"{pip} --upgrade{own} {agent}", 1800)
        else:
            self._run(f"{pip} --upgrade{own} {' '.join(map(shlex.quote, plan.only))}", 1800)
            self._run(f"{pip} --upgrade --no-deps{own} {agent}", 600)

    def start(self) -> None:
        if self._has_systemd():
            absolute = self.session.sftp_normalize(self.dir)
            unit = self._run(f"{self.q}/venv/bin/python -m hwnas_agent unit --config "
                             f"{shlex.quote(absolute + '/' + CONFIG_NAME)}")
            self._run(f"mkdir -p -- {UNIT_DIR}")
            sftp = self.session.sftp()
            try:
                with sftp.open(UNIT, "w") as handle:
                    handle.write(unit.encode("utf-8"))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise DeviceError(f"{self.profile.name}: cannot write ~/{UNIT}: "
                                  f"{exc or type(exc).__name__}") from None
            finally:
                sftp.close()
            self._run("systemctl --user daemon-reload && systemctl --user enable --now "
                      "hwnas-agent && systemctl --user restart hwnas-agent")
            return
        self._write("supervise.sh", SUPERVISOR, 0o700)
        self._run(f"cd -- {self.q} && rm -f stop && {{ setsid nohup sh ./supervise.sh >/dev/null "
                  f"2>&1 </dev/null & echo $! > supervisor.pid; }}")

    def stop(self) -> None:
        if self._has_unit():
            self._run("systemctl --user stop hwnas-agent", check=False)
        # the agent finishes its reply and closes its port on TERM: waited for (up to 15 s), so
        # that a restart never talks to the old agent while it goes
        self._run(f"cd -- {self.q} 2>/dev/null && if test -f supervisor.pid; then touch stop; "
                  f"group=$(cat supervisor.pid); kill -TERM -- -$group 2>/dev/null; i=0; "
                  f"while kill -0 -- -$group 2>/dev/null && [ $i -lt 60 ]; do sleep 0.25; "
                  f"i=$((i+1)); done; rm -f supervisor.pid; fi", check=False)

    def status(self) -> AgentStatus:
        if self._has_unit():
            manager = "systemd"
            running = self._run("systemctl --user is-active hwnas-agent",
                                check=False).strip() == "active"
        elif self._run(f"test -f {self.q}/supervisor.pid && echo yes", check=False).strip() == "yes":
            manager = "supervisor"
            running = self._run(f"kill -0 $(cat {self.q}/supervisor.pid) 2>/dev/null && echo yes",
                                check=False).strip() == "yes"
        else:
            manager, running = "none", False
        version, detail = None, "not running"
        try:
            hello = self.client().hello()
            version, detail = hello["agent_version"], f"answering on 127.0.0.1:{self.connection.agent_port}"
        except (AgentNotRunning, AgentNotAnswering) as exc:  # not (or not yet, or no longer) up
            detail = str(exc)
        return AgentStatus(manager, running, version, detail)

    def client(self) -> AgentClient:
        token = (self.session.read_file(self._path(TOKEN_NAME)) or b"").decode().strip()
        return AgentClient(SSHTransport(self.session, self.connection.agent_port, retries=0),
                           self.profile.name, token, f"read over SSH from {self._path(TOKEN_NAME)}")

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
        if self._has_unit():
            return self._run(f"journalctl --user -u hwnas-agent -n {int(lines)} --no-pager",
                             check=False)
        return self._run(f"tail -n {int(lines)} -- {self.q}/agent.log 2>/dev/null || "
                         f"echo 'no log yet'", check=False)

    def uninstall(self) -> None:
        self.stop()
        if self._has_unit():
            self._run(f"systemctl --user disable hwnas-agent; rm -f {UNIT}; "
                      "systemctl --user daemon-reload", check=False)
        self._run(f"rm -rf -- {self.q}")
