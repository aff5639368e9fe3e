"""The aarch64 box's parts below the box itself (hwnas/testing/aarch64.py): the cached Debian
arm64 root (debootstrap), binfmt_misc and qemu-user, and the processes running in a box."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from hwnas.errors import HwnasError

SUITE = "bookworm"
ARCH = "arm64"
MACHINE = "aarch64"  # uname -m inside the box
VARIANT = "minbase"
# what `hwnas agent install` needs on a board: a Python >= 3.8 that can make a venv
PACKAGES = ("python3", "python3-venv")
MIRROR = os.environ.get("HWNAS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENTRY = f"qemu-{MACHINE}"
# mount points of running boxes: sshd's ChrootDirectory wants every component of the path
# root-owned and writable by root alone (never under /tmp)
MOUNTS = Path("/run/hwnas-aarch64-box")
# the box's device nodes (character devices: major, minor), as a minimal /dev has them
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0)}
# the core qemu emulates (QEMU_CPU, for every process in the box) and the /proc/cpuinfo the
# box shows for it (implementer, variant, part, revision, features as the core reports them):
# onnxruntime's cpuinfo reads the processor list there, and the aarch64 onnxruntime 1.32
# wheel dies of SIGSEGV at import on an x86 kernel's cpuinfo (qemu 7.2 passes the host's
# through; qemu >= 8.1 writes an arm one itself). The Raspberry Pi 5's Cortex-A76 by default.
CPUS = {
    "cortex-a76": ("0x41", "0x4", "0xd0b", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 "
                   "atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "cortex-a72": ("0x41", "0x0", "0xd08", "3", "fp asimd evtstrm crc32 cpuid"),  # Pi 4
}
# a short methodology: emulation is slow, and its figures are no latency anyway
SHORT_MEASUREMENT = ("{warmup_iterations: 3, warmup_seconds: 0.05, min_iterations: 20, "
                     "min_seconds: 0.2, rounds: 2}")
APT_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")


class BoxError(HwnasError):
    """The box cannot be built or started here; the message says what to install or do."""


def _run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def missing_tools() -> list[str]:
    """The Debian packages the box needs that this machine lacks."""
    found = {"qemu-user-static": shutil.which("qemu-aarch64-static") or
             Path(f"/usr/libexec/qemu-binfmt/{MACHINE}-binfmt-P").exists(),
             "binfmt-support": shutil.which("update-binfmts"),
             "debootstrap": shutil.which("debootstrap")}
    return [name for name in APT_PACKAGES if not found[name]]


def binfmt_entry(folder: Path = BINFMT) -> dict[str, str] | None:
    """qemu-aarch64's binfmt_misc registration as the kernel shows it, or None if absent."""
    try:
        text = (folder / ENTRY).read_text()
    except OSError:
        return None
    lines = text.splitlines()
    found = {"state": lines[0].strip() if lines else ""}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        found[key.rstrip(":")] = value.strip()
    return found


def enable_binfmt() -> str | None:
    """Make this kernel hand aarch64 programs to qemu (mount binfmt_misc, register
    qemu-aarch64); the reason binfmt_misc cannot be used here, or None once it can.
    BoxError where the Debian packages are missing (that is set-up, not this machine)."""
    if sys.platform != "linux":
        return f"binfmt_misc is Linux's; this is {sys.platform}"
    if os.geteuid() != 0:
        return "binfmt_misc cannot be used: registering qemu-aarch64 and mounting need root"
    if not (BINFMT / "register").exists():
        if not BINFMT.is_dir():
            return f"binfmt_misc cannot be used: this kernel has no {BINFMT}"
        done = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        # judged by the result: another process (a box build beside a test) may have mounted
        # it first, and then this mount fails with EBUSY
        if not (BINFMT / "register").exists():
            return (f"binfmt_misc cannot be used: mounting it on {BINFMT} failed "
                    f"({(done.stderr or done.stdout).strip()}; a container needs --privileged)")
    if (BINFMT / "status").exists() and (BINFMT / "status").read_text().strip() != "enabled":
        return f"binfmt_misc cannot be used: it is switched off ({BINFMT / 'status'})"
    entry = binfmt_entry()
    if entry is None or entry["state"] != "enabled":
        missing = missing_tools()
        if missing:
            raise BoxError(f"the aarch64 box needs the Debian packages {' '.join(missing)}: "
                           f"run scripts/setup.sh (or apt-get install {' '.join(APT_PACKAGES)})")
        done = _run(["update-binfmts", "--enable", ENTRY])
        entry = binfmt_entry()
        if entry is None or entry["state"] != "enabled":
            return (f"binfmt_misc cannot be used: `update-binfmts --enable {ENTRY}` did not "
                    f"register it ({(done.stderr or done.stdout).strip()})")
    if "F" not in entry.get("flags", ""):
        # without F (fix binary) the kernel looks the interpreter up inside the chroot
        return (f"binfmt_misc cannot be used for a chroot: {ENTRY} is registered without the "
                f"F flag (flags: {entry.get('flags')}); re-register it from Debian's "
                f"qemu-user-static (update-binfmts --disable/--enable {ENTRY})")
    return None


def _root_key() -> str:
    return hashlib.sha256(json.dumps([SUITE, ARCH, VARIANT, PACKAGES]).encode()).hexdigest()[:12]


def _mounted_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts") as handle:
        points = [line.split()[1].replace("\\040", " ") for line in handle]
    return [p for p in points if (p + "/").startswith(prefix)]


def _folder_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _root_folder(cache: Path) -> Path:
    return cache / "aarch64-box" / f"{SUITE}-{ARCH}-{VARIANT}-{_root_key()}"


def is_built(cache: Path) -> bool:
    """Whether ``cache`` holds the whole root (cached_root would return at once)."""
    return (_root_folder(cache) / "box.json").exists()


def cached_root(cache: Path, log: Callable[[str], None] = print) -> Path:
    """The Debian bookworm arm64 root, built with debootstrap the first time (under a lock,
    into a folder renamed when whole) and found in ``cache`` after."""
    folder = _root_folder(cache)
    boxes = folder.parent
    if (folder / "box.json").exists():
        return folder / "root"
    why = enable_binfmt()
    if why:
        raise BoxError(why)
    boxes.mkdir(parents=True, exist_ok=True)
    with open(boxes / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it
        if (folder / "box.json").exists():
            return folder / "root"
        building = folder.with_name(folder.name + ".building")
        if building.exists():  # an earlier build was cut short
            if _mounted_under(building):
                raise BoxError(f"{building} still has mounts ({_mounted_under(building)}): "
                               f"unmount them and remove it")
            shutil.rmtree(building)
        debs = boxes / "debs"  # kept: a rebuild downloads nothing
        debs.mkdir(exist_ok=True)
        log(f"aarch64 box: building a Debian {SUITE} {ARCH} root with debootstrap in "
            f"{folder} (once; ~6 min on 2 cores, ~380 MB)")
        started = time.monotonic()
        done = subprocess.run(
            ["debootstrap", f"--arch={ARCH}", f"--variant={VARIANT}",
             f"--include={','.join(PACKAGES)}", f"--cache-dir={debs}", SUITE,
             str(building / "root"), MIRROR], capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            log_file = building / "root" / "debootstrap" / "debootstrap.log"
            detail = log_file.read_text()[-1500:] if log_file.exists() else done.stderr[-1500:]
            raise BoxError(f"debootstrap of the aarch64 box failed ({done.returncode}): {detail}"
                           f"\n(mirror {MIRROR}; set HWNAS_DEBIAN_MIRROR to another)")
        seconds = time.monotonic() - started
        for leftover in (building / "root" / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        version = _run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"]).stdout.strip()
        qemu = _run(["dpkg-query", "-W", "-f=${Version}", "qemu-user-static"]).stdout.strip()
        (building / "box.json").write_text(json.dumps({
            "suite": SUITE, "arch": ARCH, "variant": VARIANT, "packages": list(PACKAGES),
            "mirror": MIRROR, "build_seconds": round(seconds, 1),
            "root_bytes": _folder_bytes(building / "root"), "debootstrap": version,
            "qemu_user_static": qemu, "built_unix_time": time.time()}, indent=1) + "\n")
        os.rename(building, folder)
        log(f"aarch64 box: built in {seconds:.0f} s")
    return folder / "root"


def root_info(root: Path) -> dict:
    """What cached_root wrote about the root it built (build seconds, size, versions)."""
    return json.loads((root.parent / "box.json").read_text())


def pids_in(mountpoint: Path) -> list[int]:
    """Processes whose root directory is ``mountpoint`` (a box's: only the box runs there)."""
    found, target = [], str(mountpoint)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == target:
                    found.append(int(entry.name))
    return found


def end_processes(mountpoint: Path, timeout_s: float = 10.0) -> None:
    """TERM, then KILL, each process of the box at ``mountpoint``, by pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_in(mountpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while pids_in(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pids_in(mountpoint):
            return


def reap_stale_boxes(mounts: Path = MOUNTS) -> list[Path]:
    """Boxes left behind by a process that died before stop() (a killed test run): named
    ``<pid>-<hex>`` after the process that started them, reaped once that pid is gone (its
    processes ended, its mounts undone, its mount point removed)."""
    reaped: list[Path] = []
    if not mounts.is_dir():
        return reaped
    for point in sorted(p for p in mounts.iterdir() if p.is_dir()):
        owner = point.name.split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        record = point.with_name(point.name + ".json")  # its sshd, orphaned with it
        with contextlib.suppress(OSError, ValueError, KeyError):
            sshd = json.loads(record.read_text())
            cmdline = Path(f"/proc/{sshd['pid']}/cmdline").read_bytes().decode(errors="replace")
            if sshd["config"] in cmdline:  # that process still, not a reused pid
                os.kill(int(sshd["pid"]), signal.SIGTERM)
        end_processes(point)
        with open("/proc/self/mounts") as handle:
            points = [line.split()[1] for line in handle]
        for target in sorted((p for p in points if p == str(point) or
                              p.startswith(str(point) + "/")), key=len, reverse=True):
            if _run(["umount", target]).returncode != 0:
                _run(["umount", "-l", target])
        if not os.path.ismount(point):
            with contextlib.suppress(OSError):
                point.rmdir()
                record.unlink(missing_ok=True)
                reaped.append(point)
    return reaped
