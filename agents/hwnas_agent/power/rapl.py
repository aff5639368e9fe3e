"""Intel/AMD RAPL package energy: /sys/class/powercap/intel-rapl:N/energy_uj (cumulative µJ).

The counter wraps at max_energy_range_uj (about once a minute under load): when a reading
is below the previous one the delta is e2 + max_energy_range_uj - e1. Sub-zones
(intel-rapl:N:M) are parts of their package and are not added again.
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True


def counter_delta(previous: float, current: float, max_range: float) -> float:
    return current - previous if current >= previous else current + max_range - previous


class RaplSource(PowerSource):
    kind = "rapl"
    rate_hz = 20.0

    def __init__(self, sysfs_root: str = "/sys") -> None:
        self._domains: List[Tuple[str, str, float]] = []
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/powercap/intel-rapl:*"))):
            if not re.search(r"intel-rapl:\d+$", folder):
                continue
            energy = os.path.join(folder, "energy_uj")
            max_range = read_number(os.path.join(folder, "max_energy_range_uj"))
            if os.path.exists(energy) and max_range:
                name = read_text(os.path.join(folder, "name")) or os.path.basename(folder)
                self._domains.append((name, energy, max_range))
        if not self._domains:
            raise SensorUnavailable("no RAPL package domain under %s/class/powercap" % sysfs_root)
        self.covers = "CPU package energy (RAPL: %s); excludes the rest of the board" % ", ".join(
            name for name, _, _ in self._domains)
        self._last: Optional[Dict[str, float]] = None
        self._last_time = 0.0
        self._total_j = 0.0

    def read(self) -> PowerSample:
        now = time.monotonic()
        raw = {}
        for name, path, _ in self._domains:
            value = read_number(path)
            if value is None:
                raise SensorUnavailable("%s could not be read" % path)
            raw[name] = value
        watts = None
        if self._last is not None:
            delta_uj = sum(counter_delta(self._last[name], raw[name], max_range)
                           for name, _, max_range in self._domains)
            self._total_j += delta_uj / 1e6
            if now > self._last_time:
                watts = delta_uj / 1e6 / (now - self._last_time)
        self._last, self._last_time = raw, now
        return PowerSample(watts, energy_j=self._total_j, time_s=now)


def open_source(sysfs_root: str = "/sys") -> RaplSource:
    return RaplSource(sysfs_root)
