"""The device's wheel folder kept equal to a set of files from the controller, over SFTP.

Only what the device lacks (by name and sha256, hashed on the device by its own Python)
travels; files of an older set are removed, so pip's --find-links sees exactly this set.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import paramiko

from hwnas.errors import DeviceError
from hwnas.remote.ssh import SSHSession

# run by the device's Python in the wheel folder: name -> sha256 of each file there
HASHES = ("import hashlib, json, os; print(json.dumps({n: hashlib.sha256(open(n, 'rb').read())"
          ".hexdigest() for n in sorted(os.listdir('.')) if os.path.isfile(n)}))")


@dataclasses.dataclass(frozen=True)
class Shipped:
    files: tuple[str, ...]
    bytes: int
    removed: tuple[str, ...]


def device_hashes(session: SSHSession, python: str, folder: str) -> dict[str, str]:
    code, out, err = session.run(f"cd -- {shlex.quote(folder)} && {shlex.quote(python)} -c "
                                 f"{shlex.quote(HASHES)}", 300)
    if code != 0:
        raise DeviceError(f"{session.device}: cannot list {folder}: {(err or out).strip()[-400:]}")
    return json.loads(out.strip().splitlines()[-1])


def sync_folder(session: SSHSession, python: str, folder: str, files: dict[Path, str]) -> Shipped:
    """Make ``folder`` on the device hold exactly ``files`` (local path -> sha256)."""
    present = device_hashes(session, python, folder)
    wanted = {path.name: (path, sha) for path, sha in files.items()}
    send = [path for name, (path, sha) in sorted(wanted.items()) if present.get(name) != sha]
    stale = tuple(name for name in sorted(present) if name not in wanted)
    sftp = session.sftp()
    try:
        for path in send:
            target = f"{folder}/{path.name}"
            sftp.put(str(path), target + ".part")
            sftp.posix_rename(target + ".part", target)  # a cut link leaves no half wheel
        for name in stale:
            sftp.remove(f"{folder}/{name}")
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise DeviceError(f"{session.device}: cannot copy wheels to {folder}: "
                          f"{exc or type(exc).__name__}; check the space there (df -h) and run "
                          f"install again (what arrived is kept)") from None
    finally:
        sftp.close()
    return Shipped(tuple(p.name for p in send), sum(p.stat().st_size for p in send), stale)
