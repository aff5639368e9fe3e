"""Where to connect: OpenSSH destinations (`[user@]host[:port]`), ~/.ssh/config Host aliases
and their ProxyJump chains, resolved to Endpoints."""

from __future__ import annotations

import dataclasses
import getpass
from pathlib import Path

import paramiko

from hwnas.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Endpoint:
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    proxy_jump: str | None

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def where(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


def ssh_config(path: Path | None) -> paramiko.SSHConfig:
    if path is not None and path.expanduser().exists():
        return paramiko.SSHConfig.from_path(str(path.expanduser()))
    return paramiko.SSHConfig()


def parse_destination(spec: str) -> tuple[str | None, str, int | None]:
    """OpenSSH's `[user@]host[:port]` (and `ssh://`, `[v6]:port`, a bare IPv6 address)."""
    text = spec[len("ssh://"):] if spec.startswith("ssh://") else spec
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port_text = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"SSH destination {spec!r}: expected [address]:port")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a name, or an IPv6 address without a port
    if not host:
        raise ConfigError(f"SSH destination {spec!r} names no host")
    if port_text is None:
        return user or None, host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"SSH destination {spec!r}: port {port_text!r} is not a number 1-65535")
    return user or None, host, int(port_text)


def split_jumps(value: str | None) -> tuple[str, ...]:
    """ProxyJump as OpenSSH writes it: hops separated by commas, in order; `none`: no jump."""
    if not value or value.strip().lower() == "none":
        return ()
    return tuple(hop.strip() for hop in value.split(",") if hop.strip())


def resolve(spec: str, config: paramiko.SSHConfig, port: int | None = None,
            user: str | None = None, identity: Path | None = None,
            jump: str | None = None, hop: bool = False) -> Endpoint:
    """A host (or `user@host:port`, or a Host alias of ~/.ssh/config) to connect to.

    The profile's identity file replaces the alias's own for the device; for a jump host
    (``hop``) it is added to them, so that one key given in the profile opens every hop."""
    spec_user, spec, spec_port = parse_destination(spec)
    user, port = user or spec_user, port or spec_port
    entry = config.lookup(spec)
    own = [str(Path(p).expanduser()) for p in entry.get("identityfile", [])]
    given = [str(identity.expanduser())] if identity else []
    identities = list(dict.fromkeys(own + given)) if hop else (given or own)
    return Endpoint(hostname=entry.get("hostname", spec), port=port or int(entry.get("port", 22)),
                    user=user or entry.get("user") or getpass.getuser(),
                    identity_files=tuple(identities),
                    proxy_jump=None if hop else (jump or entry.get("proxyjump")))
