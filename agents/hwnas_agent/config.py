"""The agent's own configuration file (JSON), the only place that says what it may execute.

A request over the wire names a power source; what that source is (a sysfs meter, or a meter
*program* with its arguments) comes from this file on the device, written by `hwnas agent
install` from the device profile (mode 0600) or by the controller for the local agent.
Relative paths in the file are relative to the file's own folder.

    {"port": 8765, "state_dir": "state", "token_file": "token",
     "power_sources": {"command": {"kind": "command", "options": {"command": ["meter", "-w"]}}},
     "worker_memory_mb": 1024, "max_job_history": 500, "job_history_days": 7}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from typing import Any, Dict, Optional

from hwnas_agent.protocol import NO_POWER, POWER_KINDS, SOURCE_NAME_RE

DEFAULT_PORT = 8765
WORKER_MEMORY_FRACTION = 0.5  # of the device's RAM, when the file does not say
_OPTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class AgentConfigError(Exception):
    """The configuration file is missing, unreadable, unsafe or invalid; the message says how."""


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hwnas-agent")


@dataclasses.dataclass(frozen=True)
class PowerSourceConfig:
    kind: str
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: str = dataclasses.field(default_factory=default_state_dir)
    token_file: Optional[str] = None  # default: <state_dir>/token
    power_sources: Dict[str, PowerSourceConfig] = dataclasses.field(default_factory=dict)
    # the memory all workers (measure, load check) may use together: they run one at a time,
    # each under this RLIMIT_DATA; None: half the RAM; 0: no limit
    worker_memory_mb: Optional[float] = None
    max_queue: int = 16
    max_store_mb: Optional[float] = 2000.0
    max_connections: int = 64
    # finished jobs kept in state/jobs (about 20 KB each); one whose result no client has
    # fetched is never removed, whatever its rank or age; None: no age limit
    max_job_history: int = 500
    job_history_days: Optional[float] = 7.0

    @property
    def token_path(self) -> str:
        return self.token_file or os.path.join(self.state_dir, "token")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, base_dir: str = ".", where: str = "agent config"
                  ) -> "AgentConfig":
        if not isinstance(data, dict):
            raise AgentConfigError("%s: expected a JSON object" % where)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise AgentConfigError("%s: unknown key(s) %s; allowed: %s"
                                   % (where, ", ".join(unknown), ", ".join(sorted(fields))))
        values = dict(data)
        for key in ("state_dir", "token_file"):
            if values.get(key) is not None:
                if not isinstance(values[key], str) or not values[key]:
                    raise AgentConfigError("%s: %s must be a path" % (where, key))
                values[key] = os.path.join(base_dir, os.path.expanduser(values[key]))
        values["power_sources"] = _power_sources(values.get("power_sources", {}), where)
        config = cls(**values)
        config._validate(where)
        return config

    def _validate(self, where: str) -> None:
        def integer(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise AgentConfigError("%s: %s = %r; expected an integer %d..%d"
                                       % (where, name, value, low, high))

        integer("port", 0, 65535)
        integer("max_queue", 1, 10000)
        integer("max_connections", 4, 4096)
        integer("max_job_history", 1, 10 ** 7)
        if not isinstance(self.host, str) or not self.host:
            raise AgentConfigError("%s: host must be an address" % where)
        for name, unit in (("worker_memory_mb", "MB"), ("max_store_mb", "MB"),
                           ("job_history_days", "days")):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float))
                                          and not isinstance(value, bool) and value >= 0):
                raise AgentConfigError("%s: %s = %r; expected null or a number of %s >= 0"
                                       % (where, name, value, unit))

    def worker_memory_bytes(self, memory_total_mb: Optional[float]) -> Optional[int]:
        """The workers' memory limit in bytes (all of them together); None for no limit."""
        if self.worker_memory_mb == 0:
            return None
        if self.worker_memory_mb is not None:
            return int(self.worker_memory_mb * 1024 * 1024)
        if memory_total_mb is None:
            return None
        return int(memory_total_mb * WORKER_MEMORY_FRACTION * 1024 * 1024)


def _power_sources(data: Any, where: str) -> Dict[str, PowerSourceConfig]:
    if not isinstance(data, dict):
        raise AgentConfigError("%s: power_sources must be an object {name: {kind, options}}" % where)
    sources = {}
    for name, entry in data.items():
        if not SOURCE_NAME_RE.match(name) or name == NO_POWER:
            raise AgentConfigError("%s: power source name %r: use letters, digits, '.', '_', '-' "
                                   "(and not '%s')" % (where, name, NO_POWER))
        if not isinstance(entry, dict) or set(entry) - {"kind", "options"}:
            raise AgentConfigError("%s: power_sources.%s must be {kind, options}" % (where, name))
        kind, options = entry.get("kind"), entry.get("options", {})
        if kind not in POWER_KINDS:
            raise AgentConfigError("%s: power_sources.%s.kind = %r; allowed: %s" % (
                where, name, kind, ", ".join(POWER_KINDS)))
        if not isinstance(options, dict) or not all(_OPTION_NAME.match(k) for k in options):
            raise AgentConfigError("%s: power_sources.%s.options must be an object of option "
                                   "names" % (where, name))
        sources[name] = PowerSourceConfig(kind, dict(options))
    return sources


def check_private(path: str, what: str) -> None:
    """Refuse a file others could write (or, for a secret, read): what it says is trusted."""
    info = os.stat(path)
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise AgentConfigError("%s %s belongs to another user (uid %d); the agent trusts only "
                               "its own files" % (what, path, info.st_uid))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AgentConfigError("%s %s is accessible to other users (mode %o); run: chmod 600 %s"
                               % (what, path, stat.S_IMODE(info.st_mode), path))


def load(path: str) -> AgentConfig:
    try:
        check_private(path, "agent config")
        with open(path) as handle:
            data = json.load(handle)
    except OSError as exc:
        raise AgentConfigError("cannot read the agent config %s: %s" % (path, exc.strerror))
    except ValueError as exc:
        raise AgentConfigError("agent config %s is not valid JSON: %s" % (path, exc))
    return AgentConfig.from_dict(data, os.path.dirname(os.path.abspath(path)), path)


def write_private(path: str, text: str) -> None:
    """Create or replace a file readable only by this user (0600), atomically."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_or_create_token(path: str) -> str:
    """The agent's secret token; created (0600, 256 random bits) when missing."""
    import secrets

    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    check_private(path, "token file")
    with open(path) as handle:
        token = handle.read().strip()
    if len(token) < 32:
        raise AgentConfigError("token file %s holds no token (at least 32 characters); delete it "
                               "to have a new one made, or run `hwnas agent install` again" % path)
    return token
