"""Which host keys are trusted: known_hosts read as OpenSSH reads it (`@revoked` honoured,
`@cert-authority` skipped with a warning), and a policy that never trusts a key silently.
Each refusal says how to check the key on the device and how to trust it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import shlex
from pathlib import Path
from typing import Any

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from hwnas.remote.ssh.destination import Endpoint
from hwnas.remote.ssh.errors import HostKeyRejected

log = logging.getLogger(__name__)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class KnownHosts:
    """A known_hosts file as OpenSSH reads it: plain entries are trusted; `@revoked` keys are
    refused wherever they appear; `@cert-authority` lines are skipped (hwnas checks host keys,
    not host certificates) with a warning. Paramiko alone fails on either marker."""

    path: Path
    trusted: tuple[HostKeyEntry, ...]
    revoked: frozenset[bytes]
    cert_authorities: int

    @classmethod
    def load(cls, path: Path) -> "KnownHosts":
        trusted, revoked, authorities = [], set(), 0
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
            try:
                entry = HostKeyEntry.from_line(line.strip(), number)
            except InvalidHostKey:
                entry = None
            if marker == "@cert-authority":
                authorities += 1
            elif marker == "@revoked":
                if entry is not None:
                    revoked.add(entry.key.asbytes())
            elif marker is None and entry is not None:
                trusted.append(entry)
        if authorities:
            log.warning("%s: %d @cert-authority line(s) skipped: hwnas checks host keys, not host "
                        "certificates; add each device's own host key (ssh-keyscan)", path,
                        authorities)
        return cls(path, tuple(e for e in trusted if e.key.asbytes() not in revoked),
                   frozenset(revoked), authorities)

    def install(self, client: paramiko.SSHClient) -> None:
        keys = client.get_host_keys()
        for entry in self.trusted:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return key.asbytes() in self.revoked


def revoked_key(device: str, known: KnownHosts, endpoint: Endpoint,
                key: paramiko.PKey) -> HostKeyRejected:
    return HostKeyRejected(
        f"{device}: the host key of {endpoint.known_hosts_name} ({key.get_name()} "
        f"{fingerprint(key)}) is marked @revoked in {known.path}: hwnas refuses "
        f"it. If the device was given a new key, compare its fingerprint on the device and "
        f"add that key")


def changed_key(device: str, known: KnownHosts, endpoint: Endpoint,
                exc: paramiko.BadHostKeyException) -> HostKeyRejected:
    """The host offered another key than known_hosts holds for it (or a revoked one)."""
    if known.is_revoked(exc.key):
        return revoked_key(device, known, endpoint, exc.key)
    return HostKeyRejected(
        f"{device}: the host key of {endpoint.known_hosts_name} CHANGED: it offered "
        f"{exc.key.get_name()} {fingerprint(exc.key)}, {known.path} has "
        f"{fingerprint(exc.expected_key)}. This may be an attack or a reinstalled "
        f"device; if you know it was reinstalled: ssh-keygen -f "
        f"{shlex.quote(str(known.path))} -R "
        f"{shlex.quote(endpoint.known_hosts_name)} and trust the new key")


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a key silently: refuse it with its fingerprint and how to trust it."""

    def __init__(self, device: str, known: KnownHosts, endpoint: Endpoint) -> None:
        self.device, self.known, self.endpoint = device, known, endpoint

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        known = self.known
        if known.is_revoked(key):
            raise revoked_key(self.device, known, self.endpoint, key)
        port = f"-p {self.endpoint.port} " if self.endpoint.port != 22 else ""
        note = (f" ({known.path} has @cert-authority lines, which hwnas does not use)"
                if known.cert_authorities else "")
        raise HostKeyRejected(
            f"{self.device}: unknown host key for {self.endpoint.known_hosts_name}: "
            f"{key.get_name()} {fingerprint(key)}{note}. hwnas never trusts a host key silently. "
            f"Compare it with the device's own (on the device: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().replace('ssh-', '').split('-')[0]}_key.pub), "
            f"then trust it: ssh-keyscan {port}{shlex.quote(self.endpoint.hostname)} >> "
            f"{shlex.quote(str(known.path))}")
