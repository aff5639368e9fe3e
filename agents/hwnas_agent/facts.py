"""Device facts and the provenance attached to every measurement.

Roots are parameters (never test switches inside the code): tests pass fixture trees.
"""

from __future__ import annotations

import glob
import os
import platform
import socket
import time
from typing import Any, Dict, List, Optional

from hwnas_agent import __version__


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


def cpu_frequencies(sysfs_root: str = "/sys") -> List[Dict[str, Any]]:
    """Per-CPU governor and clocks (kHz in sysfs, MHz here)."""
    result = []
    pattern = os.path.join(sysfs_root, "devices/system/cpu/cpu[0-9]*/cpufreq")
    for path in sorted(glob.glob(pattern), key=lambda p: int(p.split("/cpu")[-1].split("/")[0])):
        def mhz(name: str) -> Optional[float]:
            value = _read(os.path.join(path, name))
            return int(value) / 1000.0 if value and value.isdigit() else None
        result.append({
            "cpu": os.path.basename(os.path.dirname(path)),
            "governor": _read(os.path.join(path, "scaling_governor")),
            "cur_mhz": mhz("scaling_cur_freq"),
            "max_mhz": mhz("scaling_max_freq"),
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


def runtimes() -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    try:
        import onnxruntime as ort

        found["onnxruntime"] = {"version": ort.__version__,
                                "execution_providers": ort.get_available_providers()}
    except ImportError:
        pass
    return found


def device_facts(proc_root: str = "/proc", sysfs_root: str = "/sys") -> Dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(proc_root),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": memory_total_mb(proc_root),
        "runtimes": runtimes(),
        "agent_version": __version__,
    }


def provenance(sysfs_root: str = "/sys", proc_root: str = "/proc") -> Dict[str, Any]:
    """What a figure depends on besides the model: recorded before and after each job."""
    return {
        "agent_version": __version__,
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(proc_root),
        "cpu_frequencies": cpu_frequencies(sysfs_root),
        "temperatures_c": temperatures_c(sysfs_root),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "unix_time": time.time(),
    }
