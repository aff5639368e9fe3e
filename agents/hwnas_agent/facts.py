"""Device facts and the provenance attached to every measurement.

Roots are parameters (never test switches inside the code): tests pass fixture trees.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional

from hwnas_agent import __version__
from hwnas_agent.emulation import user_mode_emulation
from hwnas_agent.protocol import GENAI, ONNXRUNTIME, TENSORRT


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except OSError:
        return None


def cpu_model(proc_root: str = "/proc") -> str:
    text = _read(os.path.join(proc_root, "cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def memory_total_mb(proc_root: str = "/proc") -> Optional[float]:
    text = _read(os.path.join(proc_root, "meminfo")) or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024.0
    return None


def _mhz(path: str) -> Optional[float]:
    """A cpufreq file (kHz) in MHz."""
    value = _read(path)
    return int(value) / 1000.0 if value and value.isdigit() else None


def cpu_frequencies(sysfs_root: str = "/sys") -> List[Dict[str, Any]]:
    """Per-CPU governor and clocks (kHz in sysfs, MHz here)."""
    result = []
    pattern = os.path.join(sysfs_root, "devices/system/cpu/cpu[0-9]*/cpufreq")
    def number(path: str) -> int:
        match = re.search(r"/cpu(\d+)/cpufreq$", path)
        return int(match.group(1)) if match else -1

    for path in sorted(glob.glob(pattern), key=number):
        result.append({
            "cpu": os.path.basename(os.path.dirname(path)),
            "governor": _read(os.path.join(path, "scaling_governor")),
            "cur_mhz": _mhz(os.path.join(path, "scaling_cur_freq")),
            "max_mhz": _mhz(os.path.join(path, "scaling_max_freq")),
        })
    return result


def temperatures_c(sysfs_root: str = "/sys") -> Dict[str, float]:
    temps = {}
    for zone in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*"))):
        kind = _read(os.path.join(zone, "type"))
        value = _read(os.path.join(zone, "temp"))
        if kind and value and value.lstrip("-").isdigit():
            temps[kind] = int(value) / 1000.0
    return temps


# runtimes the agent can use besides onnxruntime, by import name; on a Jetson tensorrt comes
# from JetPack's system packages (the venv sees them: `hwnas agent install` on a Jetson)
# runtime name (protocol.RUNTIMES) -> the module it imports
OTHER_RUNTIMES = {TENSORRT: "tensorrt", GENAI: "onnxruntime_genai"}


def _imported(name: str) -> Optional[Dict[str, Any]]:
    """Version and folder of a module that imports; None where it is absent; an error where
    it is present but broken (a bindings package whose native library is missing)."""
    try:
        module = __import__(name)
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - reported, never fatal to facts
        return {"error": "%s: %s" % (type(exc).__name__, exc)}
    where = getattr(module, "__file__", None)
    return {"version": getattr(module, "__version__", None),
            "location": os.path.dirname(where) if where else None}


def runtimes() -> Dict[str, Any]:
    """Every runtime that imports here, with its version and where it comes from (the
    agent's venv or the system's site packages), and onnxruntime's execution providers."""
    found: Dict[str, Any] = {}
    info = _imported("onnxruntime")
    if info is not None and "error" not in info:
        from hwnas_agent.runtimes.ort_providers import available_providers, plugin_versions

        info.update({"execution_providers": available_providers(), "plugins": plugin_versions()})
    if info is not None:
        found[ONNXRUNTIME] = info
    for name, module in OTHER_RUNTIMES.items():
        info = _imported(module)
        if info is not None:
            found[name] = info
    return found


def parse_nvpmodel(text: str) -> Optional[Dict[str, Any]]:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' then the mode id on the next line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            mode_id = lines[index + 1] if index + 1 < len(lines) else ""
            return {"mode": line.split(":", 1)[1].strip(),
                    "id": int(mode_id) if mode_id.isdigit() else None}
    return None


def parse_jetson_clocks(text: str) -> Dict[str, Any]:
    """`jetson_clocks --show`: per-CPU governor and frequencies, GPU, EMC, power mode.
    Clocks count as locked when every listed unit runs at its maximum."""
    units: Dict[str, Dict[str, str]] = {}
    power_mode = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("NV Power Mode:"):
            power_mode = line.split(":", 1)[1].strip()
            continue
        match = re.match(r"^(cpu\d+|GPU|EMC):?\s+(.*)$", line)
        if match:
            units[match.group(1)] = dict(re.findall(r"(\w+)=(\S+)", match.group(2)))
    locked = bool(units) and all(
        u.get("MinFreq") == u.get("MaxFreq") == u.get("CurrentFreq") for name, u in units.items()
        if name != "EMC" and u.get("Online", "1") == "1")
    return {"units": units, "power_mode": power_mode, "clocks_locked": locked}


def _run(argv: List[str]) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def jetson_state(nvpmodel: str = "nvpmodel", jetson_clocks: str = "jetson_clocks"
                 ) -> Optional[Dict[str, Any]]:
    """Power mode and clock state of a Jetson; None elsewhere."""
    mode_text = _run([nvpmodel, "-q"])
    clocks_text = _run([jetson_clocks, "--show"])
    if mode_text is None and clocks_text is None:
        return None
    return {"nvpmodel": parse_nvpmodel(mode_text or ""),
            "jetson_clocks": parse_jetson_clocks(clocks_text) if clocks_text else None}


def device_facts(proc_root: str = "/proc", sysfs_root: str = "/sys") -> Dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        # None natively; under qemu-user what emulates it (its timings are not this machine's)
        "emulation": user_mode_emulation(proc_root),
        "system": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(proc_root),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": memory_total_mb(proc_root),
        "runtimes": runtimes(),
        "power_sources": _power_sources(sysfs_root),
        "jetson": jetson_state(),
        "agent_version": __version__,
    }


def _power_sources(sysfs_root: str) -> List[Dict[str, Any]]:
    from hwnas_agent.power import detect

    return detect(sysfs_root)


def provenance(sysfs_root: str = "/sys", proc_root: str = "/proc") -> Dict[str, Any]:
    """What a figure depends on besides the model: recorded before and after each job."""
    return {
        "agent_version": __version__,
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(proc_root),
        "cpu_frequencies": cpu_frequencies(sysfs_root),
        "temperatures_c": temperatures_c(sysfs_root),
        "jetson": jetson_state(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "unix_time": time.time(),
    }
