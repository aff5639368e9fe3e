"""Whether this agent runs under a user-mode emulator: an aarch64 Python on an x86-64 kernel,
handed to qemu-user by binfmt_misc (a Debian arm64 root in a box, a `docker --platform
linux/arm64` container on a laptop). Everything it times is the emulator's speed, never an
aarch64 device's latency.

The kernel says so, not the process: ``uname`` (``platform.machine()``) is answered by the
emulator for the guest, but ``/proc/sys/kernel/arch`` (Linux >= 6.1) is the kernel's own
architecture, and on older kernels ``/proc/cpuinfo`` of an x86 kernel carries x86's fields.
An aarch64 kernel running a 32-bit arm process, or an x86-64 one running i686 (``setarch``),
is the same family and native. Roots are parameters: tests pass fixture trees.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any, Dict, Optional


def family(machine: str) -> str:
    """The instruction-set family of a ``uname -m`` name (32- and 64-bit of one family run
    natively on each other's kernel)."""
    name = machine.lower()
    if name in ("x86_64", "amd64", "x64") or re.match(r"^i[3-6]86$", name):
        return "x86"
    if name.startswith(("aarch64", "arm")):
        return "arm"
    if name.startswith(("ppc", "powerpc")):
        return "power"
    for prefix in ("riscv", "s390", "mips", "loongarch", "sparc"):
        if name.startswith(prefix):
            return prefix
    return name


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as handle:
            return handle.read()
    except OSError:
        return None


def kernel_machine(proc_root: str = "/proc") -> Optional[str]:
    """The kernel's architecture as the kernel itself reports it, or None where it cannot be
    told (no /proc mounted)."""
    arch = (_read(os.path.join(proc_root, "sys/kernel/arch")) or "").strip()
    return arch or _cpuinfo_machine(proc_root)


def _cpuinfo_machine(proc_root: str) -> Optional[str]:
    """Before Linux 6.1: the family /proc/cpuinfo's fields belong to. (qemu >= 8.1 writes an
    arm one for its aarch64 guests, as the aarch64 box does: see emulator().)"""
    cpuinfo = _read(os.path.join(proc_root, "cpuinfo")) or ""
    keys = {line.partition(":")[0].strip() for line in cpuinfo.splitlines()}
    if "vendor_id" in keys and "flags" in keys:
        return "x86_64"  # (or i686: the family is what counts)
    if "CPU implementer" in keys or "Features" in keys:
        return "aarch64"
    return None


def emulator(machine: str, proc_root: str = "/proc") -> Optional[str]:
    """The binfmt_misc entry that hands ``machine``'s programs to an emulator, where this root
    can see binfmt_misc (a chroot may not have it mounted). Debian's qemu-user-static never
    registers the machine's own architecture, so an enabled entry for it means emulation."""
    folder = os.path.join(proc_root, "sys/fs/binfmt_misc")
    for name in ("qemu-" + machine, machine):
        text = _read(os.path.join(folder, name))
        if text and text.startswith("enabled"):
            found = re.search(r"^interpreter (\S+)", text, re.MULTILINE)
            return "binfmt_misc %s -> %s" % (name, found.group(1) if found else "?")
    return None


def user_mode_emulation(proc_root: str = "/proc", machine: Optional[str] = None
                        ) -> Optional[Dict[str, Any]]:
    """{"process_machine", "kernel_machine", "emulator", "reason"} where this process's code is
    translated by a user-mode emulator (qemu-user), or None where it runs natively (or the
    kernel's architecture cannot be read)."""
    process = machine or platform.machine()
    arch = (_read(os.path.join(proc_root, "sys/kernel/arch")) or "").strip()
    kernel = arch or _cpuinfo_machine(proc_root)
    through = emulator(process, proc_root)
    if kernel and family(kernel) != family(process):
        on = "on an %s kernel " % kernel
    elif not arch and through:  # cpuinfo may be the emulator's; binfmt_misc is the kernel's
        kernel, on = None, ""
    else:
        return None
    named = "qemu-user (%s)" % through if through else "a user-mode emulator (qemu-user)"
    return {
        "process_machine": process,
        "kernel_machine": kernel,
        "emulator": through,
        "reason": "%s code emulated %sby %s: the latency is the emulator's, not an %s "
                  "device's; use it for compatibility and output fidelity only"
                  % (process, on, named, process),
    }


def mark(described: Dict[str, Any], proc_root: str = "/proc",
         machine: Optional[str] = None) -> Dict[str, Any]:
    """A runtime's description (runtimes.LoadedModel.describe) with the machine's emulation
    added: every runtime's figures are emulated when the whole process is."""
    found = user_mode_emulation(proc_root, machine)
    if found is None:
        return described
    why = described.get("emulation") if described.get("emulated") else None
    return dict(described, emulated=True,
                emulation="; ".join(filter(None, [found["reason"], why])),
                user_mode_emulation=found)
