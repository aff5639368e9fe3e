"""Which keys the user can offer: the profile's identity file, the default ~/.ssh keys, the
ssh-agent; and, when none works, what is wrong with each (checked before connecting, so that
"no usable key" is never mistaken for the network)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import paramiko

from hwnas.remote.ssh.destination import Endpoint

DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ed25519")  # what paramiko looks for in ~/.ssh


def key_problems(endpoint: Endpoint, use_agent: bool) -> list[str]:
    """Why no key can be offered to ``endpoint``; empty when at least one can."""
    problems = []
    files = list(endpoint.identity_files)
    if not files:
        ssh_dir = Path("~/.ssh").expanduser()
        files = [str(ssh_dir / name) for name in DEFAULT_KEYS if (ssh_dir / name).exists()]
        if not files:
            problems.append(f"no identity_file in the profile and no {', '.join(DEFAULT_KEYS)} "
                            f"in {ssh_dir}")
    for path in files:
        try:
            paramiko.PKey.from_path(path)
            return []
        except FileNotFoundError:
            problems.append(f"{path} does not exist")
        except paramiko.PasswordRequiredException:
            problems.append(f"{path} needs a passphrase (hwnas asks for none: add it to the "
                            f"ssh-agent with `ssh-add {shlex.quote(path)}`)")
        except Exception as exc:  # paramiko raises several kinds for "not a key it can use"
            problems.append(f"{path} is not a usable private key ({exc or type(exc).__name__})")
    if use_agent:
        try:
            agent = paramiko.Agent()
        except paramiko.SSHException:
            agent = None
        try:
            if agent is not None and agent.get_keys():
                return []
        finally:
            if agent is not None:
                agent.close()
        where = "no ssh-agent (SSH_AUTH_SOCK unset)" if not os.environ.get("SSH_AUTH_SOCK") \
            else "the ssh-agent holds no key"
        problems.append(where)
    else:
        problems.append("the ssh-agent is not used (use_ssh_agent: false)")
    return problems


def copy_id_command(endpoint: Endpoint) -> str:
    """How to install the user's public key on ``endpoint``."""
    key = f"-i {shlex.quote(endpoint.identity_files[0] + '.pub')} " \
        if endpoint.identity_files else ""
    return (f"ssh-copy-id {key}-p {endpoint.port} "
            f"{shlex.quote(endpoint.user + '@' + endpoint.hostname)}")
