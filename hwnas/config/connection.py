"""How the controller reaches a device's agent: on this machine, or through SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from hwnas.config.fields import Frozen


class LocalConnection(Frozen):
    """The agent runs on this machine, started by the controller on a free loopback port."""

    kind: Literal["local"]


class SSHConnection(Frozen):
    """The agent listens on the device's 127.0.0.1 and is reached through SSH (direct-tcpip).

    ``host`` may be a Host alias of ~/.ssh/config (HostName, Port, User, IdentityFile and
    ProxyJump are taken from it). Host keys are checked strictly against ``known_hosts``.
    Keys come from ``identity_file`` or the ssh-agent; passwords are not accepted.
    """

    kind: Literal["ssh"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    user: str | None = None
    identity_file: Path | None = None
    use_ssh_agent: bool = True
    jump_host: str | None = None  # [user@]host[:port] or a Host alias
    known_hosts: Path = Path("~/.ssh/known_hosts")
    ssh_config: Path | None = Path("~/.ssh/config")
    agent_port: Annotated[int, Field(ge=1, le=65535)] = 8765
    remote_dir: str = ".local/share/hwnas-agent"  # relative to the remote home
    connect_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    retries: Annotated[int, Field(ge=0, le=20)] = 4

    # these fields reach a remote shell, a unit file or a printed command: refuse what could
    # end a line or be read as an option there (they are also always quoted)
    @field_validator("host", "user", "jump_host", "remote_dir", "identity_file", "known_hosts",
                     "ssh_config")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
            raise ValueError("holds a control character (newline, tab, escape...)")
        return value

    @field_validator("host", "user", "jump_host")
    @classmethod
    def _not_an_option(cls, value: str | None) -> str | None:
        if value is not None and any(part.strip().startswith("-") for part in value.split(",")):
            raise ValueError("starts with '-', which a command would take for an option")
        return value

    @field_validator("remote_dir")
    @classmethod
    def _own_folder(cls, value: str) -> str:
        parts = [p for p in value.strip().split("/") if p not in ("", ".")]
        if not parts or parts == ["~"] or ".." in parts or value.startswith("-"):
            raise ValueError("name a folder of its own for the agent (uninstall removes it), "
                             "e.g. .local/share/hwnas-agent; no '..', not '/' or the home "
                             "itself, not starting with '-'")
        return value
