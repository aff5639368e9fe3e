"""Thermal state around a job: cool-down before it, and throttling flags from the clocks and
temperatures recorded after every round."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from hwnas_agent.facts import cpu_frequencies, temperatures_c


def hottest(sysfs_root: str = "/sys") -> Optional[float]:
    temps = temperatures_c(sysfs_root)
    return max(temps.values()) if temps else None


def cool_down(below_c: float, timeout_s: float, sysfs_root: str = "/sys",
              poll_s: float = 1.0) -> Dict[str, Any]:
    started = time.monotonic()
    temperature = hottest(sysfs_root)
    if temperature is None:
        return {"waited_s": 0.0, "reached": None, "reason": "no thermal zones on this device"}
    while temperature is not None and temperature >= below_c:
        if time.monotonic() - started > timeout_s:
            return {"waited_s": time.monotonic() - started, "reached": False,
                    "temperature_c": temperature}
        time.sleep(poll_s)
        temperature = hottest(sysfs_root)
    return {"waited_s": time.monotonic() - started, "reached": True, "temperature_c": temperature}


def round_probe(sysfs_root: str = "/sys") -> Dict[str, Any]:
    clocks = [c["cur_mhz"] for c in cpu_frequencies(sysfs_root) if c["cur_mhz"]]
    return {"max_temperature_c": hottest(sysfs_root),
            "mean_cpu_mhz": sum(clocks) / len(clocks) if clocks else None}


def throttling(rounds: List[Dict[str, Any]], start: Dict[str, Any], rise_c: float,
               drop: float) -> Dict[str, Any]:
    """Flag a temperature rise or clock drop between the start and any round."""
    temps = [r.get("max_temperature_c") for r in rounds if r.get("max_temperature_c") is not None]
    clocks = [r.get("mean_cpu_mhz") for r in rounds if r.get("mean_cpu_mhz")]
    start_temp, start_clock = start.get("max_temperature_c"), start.get("mean_cpu_mhz")
    temperature_rise = max(temps) - start_temp if temps and start_temp is not None else None
    clock_drop = 1.0 - min(clocks) / start_clock if clocks and start_clock else None
    return {
        "temperature_rise_c": temperature_rise,
        "clock_drop": clock_drop,
        "observable": temperature_rise is not None or clock_drop is not None,
        "suspected": bool((temperature_rise is not None and temperature_rise >= rise_c)
                          or (clock_drop is not None and clock_drop >= drop)),
    }
