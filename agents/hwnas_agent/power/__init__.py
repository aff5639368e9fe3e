"""Power sensors: one small module per kind, one contract.

A source is built from its options (sysfs root, command path: parameters, never test
switches) and offers ``read() -> PowerSample``: instantaneous watts, and where the hardware
has one, a cumulative energy counter in joules (RAPL, hwmon energy, NVML) which gives
energy exactly instead of integrating samples. ``describe()`` says what the figure covers
(board input, PMIC rails, CPU package...), so a result is labelled honestly.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Dict, List, Optional

KINDS = {
    "ina3221": "hwnas_agent.power.ina3221",
    "tegrastats": "hwnas_agent.power.tegrastats",
    "pi5_pmic": "hwnas_agent.power.vcgencmd",
    "hwmon": "hwnas_agent.power.hwmon",
    "rapl": "hwnas_agent.power.rapl",
    "nvml": "hwnas_agent.power.nvml",
    "power_supply": "hwnas_agent.power.power_supply",
    "command": "hwnas_agent.power.command",
}


class SensorUnavailable(Exception):
    """This device has no such sensor, or it cannot be read; the message says what to do."""


class PowerSample:
    __slots__ = ("time_s", "watts", "energy_j", "rails_w")

    def __init__(self, watts: Optional[float], energy_j: Optional[float] = None,
                 rails_w: Optional[Dict[str, float]] = None, time_s: Optional[float] = None) -> None:
        self.time_s = time.monotonic() if time_s is None else time_s
        self.watts = watts
        self.energy_j = energy_j
        self.rails_w = rails_w or {}


class PowerSource:
    """Contract: kind, covers (what the figure measures), rate_hz, read(), close()."""

    kind = ""
    covers = ""
    rate_hz = 10.0

    def read(self) -> PowerSample:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "covers": self.covers, "rate_hz": self.rate_hz}


def open_source(kind: str, options: Optional[Dict[str, Any]] = None) -> PowerSource:
    module_name = KINDS.get(kind)
    if module_name is None:
        raise SensorUnavailable("unknown power source %r; allowed: %s" % (kind, ", ".join(KINDS)))
    module = importlib.import_module(module_name)
    return module.open_source(**(options or {}))


def detect(sysfs_root: str = "/sys") -> List[Dict[str, Any]]:
    """Every power source this device offers, best first (board input before partial rails)."""
    found = []
    for kind in ("ina3221", "pi5_pmic", "hwmon", "power_supply", "rapl", "nvml", "tegrastats"):
        module = importlib.import_module(KINDS[kind])
        try:
            source = module.open_source(sysfs_root=sysfs_root) if module.USES_SYSFS \
                else module.open_source()
            try:
                sample = source.read()
                found.append(dict(source.describe(), watts_now=sample.watts))
            finally:
                source.close()
        except SensorUnavailable:
            continue
        except Exception as exc:  # a sensor that misbehaves is reported, not fatal
            found.append({"kind": kind, "error": repr(exc)})
    return found
