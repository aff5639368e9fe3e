"""The agent tells an emulated machine (an aarch64 Python under qemu-user on an x86-64 kernel)
from a native one, from the kernel's own files; real-format /proc trees as fixtures. The
aarch64 box (tests/remote/test_aarch64.py) checks it under the real qemu."""

from __future__ import annotations

from pathlib import Path

from hwnas_agent.emulation import family, kernel_machine, mark, user_mode_emulation

# /proc/sys/fs/binfmt_misc/qemu-aarch64 as Debian bookworm's qemu-user-static registers it
BINFMT_QEMU_AARCH64 = """\
enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
# the first lines of /proc/cpuinfo of an x86-64 kernel and of a Raspberry Pi 5's
CPUINFO_X86 = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov
"""
CPUINFO_PI5 = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0b
"""


def proc(tmp_path: Path, arch: str | None = None, cpuinfo: str = "",
         binfmt: str | None = None) -> str:
    root = tmp_path / "proc"
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/fs/binfmt_misc").mkdir(parents=True)
    if arch is not None:
        (root / "sys/kernel/arch").write_text(arch + "\n")
    (root / "cpuinfo").write_text(cpuinfo)
    if binfmt is not None:
        (root / "sys/fs/binfmt_misc/qemu-aarch64").write_text(binfmt)
    return str(root)


def test_families():
    assert family("x86_64") == family("i686") == "x86"
    assert family("aarch64") == family("armv7l") == family("armv8l") == "arm"
    assert family("riscv64") == "riscv" and family("ppc64le") == "power"


def test_aarch64_on_an_x86_kernel_is_emulated_and_names_qemu(tmp_path):
    root = proc(tmp_path, "x86_64", CPUINFO_X86, BINFMT_QEMU_AARCH64)
    found = user_mode_emulation(root, machine="aarch64")
    assert found["process_machine"] == "aarch64" and found["kernel_machine"] == "x86_64"
    assert found["emulator"] == "binfmt_misc qemu-aarch64 -> /usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert found["reason"].startswith("aarch64 code emulated on an x86_64 kernel by qemu-user")
    assert "not an aarch64 device's" in found["reason"]


def test_a_chroot_without_binfmt_misc_still_knows_from_the_kernel(tmp_path):
    found = user_mode_emulation(proc(tmp_path, "x86_64"), machine="aarch64")
    assert found["emulator"] is None and "a user-mode emulator (qemu-user)" in found["reason"]


def test_before_linux_6_1_cpuinfo_tells_the_kernel(tmp_path):
    assert kernel_machine(proc(tmp_path, None, CPUINFO_X86)) == "x86_64"
    assert kernel_machine(proc(tmp_path / "pi", None, CPUINFO_PI5)) == "aarch64"
    assert user_mode_emulation(proc(tmp_path / "x", None, CPUINFO_X86), machine="aarch64")


def test_before_linux_6_1_an_emulated_cpuinfo_is_seen_through_binfmt_misc(tmp_path):
    """qemu >= 8.1 (and the aarch64 box) give an aarch64 guest an arm /proc/cpuinfo; the
    kernel's binfmt_misc entry for aarch64 still says who runs it."""
    found = user_mode_emulation(proc(tmp_path, None, CPUINFO_PI5, BINFMT_QEMU_AARCH64),
                                machine="aarch64")
    assert found["kernel_machine"] is None and "aarch64-binfmt-P" in found["emulator"]
    assert found["reason"].startswith("aarch64 code emulated by qemu-user (binfmt_misc")
    # a native Pi sees no such entry
    assert user_mode_emulation(proc(tmp_path / "pi", None, CPUINFO_PI5), machine="aarch64") is None


def test_native_machines_are_not_emulated(tmp_path):
    assert user_mode_emulation(proc(tmp_path, "aarch64", CPUINFO_PI5), machine="aarch64") is None
    # 32-bit code on its own family's 64-bit kernel runs natively (Pi OS armhf, setarch i686)
    assert user_mode_emulation(proc(tmp_path / "a", "aarch64"), machine="armv7l") is None
    assert user_mode_emulation(proc(tmp_path / "b", "x86_64"), machine="i686") is None
    # nothing to read (no /proc): not claimed either way
    assert user_mode_emulation(proc(tmp_path / "c", None, ""), machine="aarch64") is None


def test_this_machine_and_mark(tmp_path):
    assert user_mode_emulation() is None  # the tests run natively
    described = {"name": "onnxruntime", "emulated": False, "emulation": None}
    assert mark(dict(described)) == described
    emulated = mark(dict(described), proc(tmp_path, "x86_64"), machine="aarch64")
    assert emulated["emulated"] and "qemu-user" in emulated["emulation"]
    # a simulated accelerator inside an emulated machine: both reasons kept
    qnn = mark({"emulated": True, "emulation": "QNN HTP backend simulated"},
               proc(tmp_path / "q", "x86_64"), machine="aarch64")
    assert qnn["emulation"].endswith("; QNN HTP backend simulated")
