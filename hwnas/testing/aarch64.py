"""An aarch64 board in a box: Debian bookworm arm64 (what Raspberry Pi OS is built on), made
with debootstrap from Debian's own packages and run on this x86-64 machine by qemu-user-static
through binfmt_misc. The tests' real OpenSSH server reaches it with ``ChrootDirectory``: the
server is this machine's sshd, every command and the agent run inside the root as aarch64
code, and the agent's loopback port is this machine's loopback (one network).

The root file system is built once (3-6 min on 2 cores, ~250 MB: the download and
debootstrap's second stage under emulation) and cached under ``<cache>/aarch64-box/``; each box is a fresh overlay
on it (its writes go to a folder of the caller's), so every box starts as a board fresh out
of the box and the cached root is never changed. Everything it times is qemu's speed: the
agent says so in each measurement (hwnas_agent.emulation), and no such figure is a latency.

Needs root (mounts, binfmt_misc) and Debian's qemu-user-static, binfmt-support and
debootstrap (scripts/setup.sh installs them). ``python -m hwnas.testing.aarch64 build``
builds (or finds) the cached root and prints where it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path

from hwnas.testing.arm64_root import (
    _run,
    ARCH,
    binfmt_entry,
    BoxError,
    cached_root,
    CPUS,
    DEVICES,
    enable_binfmt,
    end_processes,
    MOUNTS,
    pids_in,
    reap_stale_boxes,
    root_info,
    SHORT_MEASUREMENT,
    SUITE,
)
from hwnas.testing.sshd import SSHServer


class AArch64Box:
    """A running box: a fresh overlay on the cached ``root`` (writes land in ``folder``), its
    /proc, /sys (read-only) and a minimal /dev mounted, and the tests' sshd on a loopback port
    with ``ChrootDirectory`` into it, trusting ``user_key``. ``offline``: every session sees a
    package index that does not answer, so only wheels shipped by the controller can install.

    Use as a context manager, or start() then stop(): stop ends the processes running inside
    this box (by pid; none else) and unmounts what start mounted."""

    def __init__(self, root: Path, folder: Path, user_key: Path, offline: bool = True,
                 cpu: str = "cortex-a76") -> None:
        if cpu not in CPUS:
            raise BoxError(f"aarch64 box: cpu {cpu!r} is not one of {sorted(CPUS)}")
        self.root, self.folder, self.user_key, self.offline = root, folder, user_key, offline
        self.cpu = cpu
        self.mountpoint = MOUNTS / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.mounts: list[Path] = []  # in the order mounted
        self.server: SSHServer | None = None
        self.known_hosts = folder / "known_hosts"

    def __enter__(self) -> "AArch64Box":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _mount(self, argv: list[str], target: Path) -> None:
        done = _run(["mount", *argv, str(target)])
        if done.returncode != 0:
            raise BoxError(f"aarch64 box: mount {' '.join(argv)} {target} failed: "
                           f"{(done.stderr or done.stdout).strip()}")
        self.mounts.append(target)

    def start(self) -> "AArch64Box":
        why = enable_binfmt()
        if why:
            raise BoxError(why)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        reap_stale_boxes()
        MOUNTS.mkdir(mode=0o755, parents=True, exist_ok=True)
        MOUNTS.chmod(0o755)
        self.mountpoint.mkdir(mode=0o755)
        upper, work = self.folder / "upper", self.folder / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        self._mount(["-t", "overlay", "overlay", "-o",
                     f"lowerdir={self.root},upperdir={upper},workdir={work}"], self.mountpoint)
        self.mountpoint.chmod(0o755)
        inside = self.mountpoint
        self._mount(["-t", "proc", "proc"], inside / "proc")
        self._mount(["-t", "sysfs", "-o", "ro", "sysfs"], inside / "sys")
        # a /dev of its own: the few nodes programs open, and shared memory for semaphores
        self._mount(["-t", "tmpfs", "-o", "mode=755,size=16m", "tmpfs"], inside / "dev")
        for name, (major, minor) in DEVICES.items():
            os.mknod(inside / "dev" / name, 0o20666, os.makedev(major, minor))
            os.chmod(inside / "dev" / name, 0o666)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, inside / "dev" / name)
        (inside / "dev" / "shm").mkdir()
        self._mount(["-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs"], inside / "dev/shm")
        cpuinfo = self.folder / "cpuinfo"
        cpuinfo.write_text(self.cpuinfo())
        self._mount(["--bind", "-o", "ro", str(cpuinfo)], inside / "proc/cpuinfo")
        with contextlib.suppress(BoxError):  # lets the agent name its emulator; optional
            self._mount(["-t", "binfmt_misc", "binfmt_misc"], inside / "proc/sys/fs/binfmt_misc")
        sshd = self.folder / "sshd"
        sshd.mkdir()
        server = SSHServer(sshd, self.user_key)
        # every session, and what it starts (the agent, its workers), runs on the chosen core
        env = [f"QEMU_CPU={self.cpu}"]
        if self.offline:  # pip's index, for every session: nothing answers on port 9
            env += ["PIP_INDEX_URL=http://127.0.0.1:9/simple",
                    "PIP_EXTRA_INDEX_URL=http://127.0.0.1:9/x"]
        # (sshd reads the first SetEnv line only)
        server.config.write_text(server.config.read_text() + f"ChrootDirectory {self.mountpoint}\n"
                                 f"SetEnv {' '.join(env)}\n")
        self.server = server.start()
        assert server.process is not None
        self._record.write_text(json.dumps({"pid": server.process.pid,
                                            "config": str(server.config)}))
        self.known_hosts.write_text(server.known_hosts_line())

    def cpuinfo(self) -> str:
        """/proc/cpuinfo as an arm64 kernel writes it for this many cores of ``cpu``, named
        as emulated in its Model line (what a Pi's last line holds)."""
        implementer, variant, part, revision, features = CPUS[self.cpu]
        core = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
                f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\n"
                f"CPU revision\t: {revision}\n\n")
        text = "".join(f"processor\t: {n}\n{core}" for n in range(os.cpu_count() or 1))
        return text + f"Model\t\t: {self.cpu} emulated by qemu-user (hwnas aarch64 box)\n"

    def path(self, device_path: str) -> Path:
        """A path inside the box (``/root/x``, or relative to root's home) on this machine."""
        if not device_path.startswith("/"):
            device_path = "/root/" + device_path.removeprefix("~/")
        return self.mountpoint / device_path.lstrip("/")

    def profile(self, name: str, agent_port: int, folder: Path | None = None,
                measurement: str = SHORT_MEASUREMENT) -> Path:
        """A device profile for the box (written to ``folder``, default the box's): the
        Raspberry Pi 5's runtime settings on one thread, short measurements (emulation is
        slow), and no latency budget (its latency is the emulator's)."""
        assert self.server is not None, "start() the box first"
        server = self.server
        text = f"""\
# an aarch64 board in a box (hwnas.testing.aarch64): Debian {SUITE} {ARCH} under qemu-user
name: {name}
description: Debian {SUITE} {ARCH} under qemu-user on this machine (emulated; never a latency)
connection:
  kind: ssh
  host: "{server.listen}"
  port: {server.port}
  user: {server.user}
  identity_file: {self.user_key}
  use_ssh_agent: false
  known_hosts: {self.known_hosts}
  ssh_config: null
  agent_port: {agent_port}
  connect_timeout_s: 10
  retries: 2
runtime: {{execution_providers: [CPUExecutionProvider], intra_op_threads: 1}}
precisions: [fp32, int8]
export: {{io_precision: fp32, int8_activations: uint8}}
budgets: {{model_size_mb: 1.0}}
measurement: {measurement}
"""
        path = (folder or self.folder) / f"{name}.yaml"
        path.write_text(text)
        return path

    def pids(self) -> list[int]:
        """Processes whose root is this box (started through its sshd: the agent, its
        supervisor, its workers)."""
        return pids_in(self.mountpoint)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.mounts:
            end_processes(self.mountpoint)
        for target in reversed(self.mounts):
            done = _run(["umount", str(target)])
            if done.returncode != 0:  # busy: detach it now, the kernel frees it when idle
                _run(["umount", "-l", str(target)])
        self.mounts.clear()
        if self.mountpoint.is_dir() and not os.path.ismount(self.mountpoint):
            with contextlib.suppress(OSError):
                self.mountpoint.rmdir()
        self._record.unlink(missing_ok=True)

    @property
    def _record(self) -> Path:
        """Beside the mount point: its sshd, for reap_stale_boxes after a killed run."""
        return self.mountpoint.with_name(self.mountpoint.name + ".json")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hwnas.disk import cache_folder

    parser = argparse.ArgumentParser(prog="python -m hwnas.testing.aarch64",
                                     description="the aarch64 board in a box (Debian bookworm "
                                                 "arm64 under qemu-user)")
    parser.add_argument("verb", choices=["build", "check"],
                        help="build: build or find the cached root; check: can this machine "
                             "run it (binfmt_misc)")
    args = parser.parse_args(argv)
    why = enable_binfmt()
    if why:
        print(f"aarch64 box: {why}", file=sys.stderr)
        return 2
    if args.verb == "check":
        print(f"aarch64 box: binfmt_misc hands aarch64 programs to {binfmt_entry()['interpreter']}")
        return 0
    root = cached_root(cache_folder())
    info = root_info(root)
    print(f"{root} (built in {info['build_seconds']} s, {info['root_bytes'] / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
