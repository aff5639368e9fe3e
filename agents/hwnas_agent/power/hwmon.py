"""Generic hwmon meters (INA219/INA226 on a Pi 4, board meters): power*_input and
power*_average in µW, energy*_input cumulative in µJ (then the figure has a counter).
The INA3221/INA238 of a Jetson have their own module.

Where the meter sits (in front of the whole board, or on one rail) is not visible in sysfs:
the profile says so with ``scope`` (default partial).
"""

from __future__ import annotations

import glob
import os
import time
from typing import List, Optional

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable, check_scope
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True


def _files(folder: str, prefix: str) -> List[str]:
    found = []
    for suffix in ("_input", "_average"):
        found = sorted(glob.glob(os.path.join(folder, prefix + "[0-9]*" + suffix)))
        if found:
            return found
    return found


class HwmonSource(PowerSource):
    kind = "hwmon"

    def __init__(self, sysfs_root: str = "/sys", name: Optional[str] = None,
                 scope: str = "partial") -> None:
        self.scope = check_scope(scope, "the 'hwmon' power source")
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/hwmon/hwmon*"))):
            chip = read_text(os.path.join(folder, "name")) or ""
            if chip.startswith("ina3221") or (name is not None and chip != name):
                continue
            self._power = _files(folder, "power")
            self._energy = sorted(glob.glob(os.path.join(folder, "energy[0-9]*_input")))
            if self._power or self._energy:
                self.chip = chip
                files = self._energy or self._power
                self.figure = "%s %s" % (chip, "+".join(os.path.basename(f) for f in files))
                self.has_energy_counter = bool(self._energy)
                self.covers = "hwmon meter %r (%s)" % (chip, "energy counter" if self._energy
                                                       else "power")
                return
        raise SensorUnavailable("no hwmon power or energy meter%s under %s/class/hwmon" % (
            " named %r" % name if name else "", sysfs_root))

    def _sum(self, paths: List[str], scale: float) -> Optional[float]:
        values = [read_number(path) for path in paths]
        if any(v is None for v in values):
            raise SensorUnavailable("hwmon %r: %s could not be read" % (
                self.chip, ", ".join(p for p, v in zip(paths, values) if v is None)))
        return sum(values) / scale  # type: ignore[arg-type]

    def read(self) -> PowerSample:
        started = time.monotonic()
        watts = self._sum(self._power, 1e6) if self._power else None  # µW
        energy = self._sum(self._energy, 1e6) if self._energy else None  # µJ
        return PowerSample(watts, energy_j=energy, time_s=(started + time.monotonic()) / 2.0)


def open_source(sysfs_root: str = "/sys", name: Optional[str] = None,
                scope: str = "partial") -> HwmonSource:
    return HwmonSource(sysfs_root, name, scope)
