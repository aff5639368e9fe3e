"""Intel/AMD RAPL energy counters: /sys/class/powercap/intel-rapl:N[:M]/energy_uj (cumulative µJ).

Counters wrap at max_energy_range_uj (about once a minute under load): when a reading is
below the previous one the delta is e2 + max_energy_range_uj - e1.

Domains overlap, so which one the figure is must be chosen, never summed blindly:
- ``psys`` (platform, a top-level zone on client parts) already contains the package: when
  present it alone is the figure, the broadest RAPL offers.
- otherwise the figure is every ``package-N`` plus every ``dram`` domain: the DRAM domain is a
  sub-zone in sysfs but its energy is not part of the package's (Intel SDM vol. 3B, RAPL
  domains), and inference moves a lot of memory, so leaving it out would under-read.
- ``core``/``uncore`` sub-zones are parts of their package: reported, never added.
Every domain is reported by name (sub-zones as ``package-0:dram``); the figure names its own.
RAPL is the processor's own estimate of itself: it never covers the board's input.
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
# watts are the mean over the interval since the previous read: over a longer one (the gap
# between the idle and the timed phase) they are not "now" and are left out; the counter still
# counts every joule. Sampling slower than 4 Hz therefore gives the counter figure alone.
MAX_INTERVAL_S = 0.25


def counter_delta(previous: float, current: float, max_range: float) -> float:
    return current - previous if current >= previous else current + max_range - previous


def rapl_domains(sysfs_root: str) -> List[Tuple[str, str, float]]:
    """(name, energy_uj file, max range) of every zone and sub-zone, names made unique."""
    found = []
    names: Dict[str, str] = {}
    for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/powercap/intel-rapl:*"))):
        zone = re.search(r"intel-rapl:(\d+(?::\d+)?)$", folder)
        energy = os.path.join(folder, "energy_uj")
        max_range = read_number(os.path.join(folder, "max_energy_range_uj"))
        if not zone or not os.path.exists(energy) or not max_range:
            continue
        name = read_text(os.path.join(folder, "name")) or os.path.basename(folder)
        names[zone.group(1)] = name
        parent = zone.group(1).split(":")[0]
        if ":" in zone.group(1):
            name = "%s:%s" % (names.get(parent, "zone-" + parent), name)
        found.append((name, energy, max_range))
    return found


def choose_figure(names: List[str]) -> Tuple[List[str], str]:
    """(domains whose sum is the figure, what that covers)."""
    if "psys" in names:
        return ["psys"], ("RAPL psys (platform) domain, which already contains the package "
                          "(not added to it); the processor's own estimate, not the board input")
    packages = [n for n in names if n.startswith("package") and ":" not in n]
    dram = [n for n in names if n.split(":")[-1] == "dram"]
    if not packages:
        return [], ""
    covers = "RAPL %s: CPU package(s)%s; excludes the rest of the board" % (
        " + ".join(packages + dram), " and their DRAM" if dram else " only (no DRAM domain)")
    return packages + dram, covers


class RaplSource(PowerSource):
    kind = "rapl"
    rate_hz = 20.0
    has_energy_counter = True

    def __init__(self, sysfs_root: str = "/sys") -> None:
        self._domains = rapl_domains(sysfs_root)
        self._figure, self.covers = choose_figure([name for name, _, _ in self._domains])
        if not self._figure:
            raise SensorUnavailable("no RAPL psys or package domain under %s/class/powercap"
                                    % sysfs_root)
        self.figure = "+".join(self._figure)
        self._last: Optional[Dict[str, float]] = None
        self._last_time = 0.0
        self._totals_j = {name: 0.0 for name, _, _ in self._domains}

    def read(self) -> PowerSample:
        started = time.monotonic()
        raw = {}
        for name, path, _ in self._domains:
            value = read_number(path)
            if value is None:
                raise SensorUnavailable("%s could not be read" % path)
            raw[name] = value
        now = (started + time.monotonic()) / 2.0  # the reading's instant, within half a read
        rails: Dict[str, float] = {}
        if self._last is not None:
            interval = now - self._last_time
            for name, _, max_range in self._domains:
                delta_j = counter_delta(self._last[name], raw[name], max_range) / 1e6
                self._totals_j[name] += delta_j
                if 0 < interval <= MAX_INTERVAL_S:
                    rails[name] = delta_j / interval
        self._last, self._last_time = raw, now
        watts = sum(rails[n] for n in self._figure) if rails else None
        return PowerSample(watts, energy_j=sum(self._totals_j[n] for n in self._figure),
                           rails_w=rails, time_s=now)

    def describe(self):  # type: ignore[no-untyped-def]
        return dict(super().describe(), domains=[name for name, _, _ in self._domains])


def open_source(sysfs_root: str = "/sys") -> RaplSource:
    return RaplSource(sysfs_root)
