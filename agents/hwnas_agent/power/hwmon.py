"""Generic hwmon meters (INA219/INA226 on a Pi 4, board meters): power*_input and
power*_average in µW, energy*_input cumulative in µJ. The INA3221 has its own module."""

from __future__ import annotations

import glob
import os
from typing import List, Optional

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
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

    def __init__(self, sysfs_root: str = "/sys", name: Optional[str] = None) -> None:
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/hwmon/hwmon*"))):
            chip = read_text(os.path.join(folder, "name")) or ""
            if chip.startswith("ina3221") or (name is not None and chip != name):
                continue
            self._power = _files(folder, "power")
            self._energy = sorted(glob.glob(os.path.join(folder, "energy[0-9]*_input")))
            if self._power or self._energy:
                self.chip = chip
                self.covers = "hwmon meter %r (%s)" % (chip, "power" if self._power else "energy")
                return
        raise SensorUnavailable("no hwmon power or energy meter%s under %s/class/hwmon" % (
            " named %r" % name if name else "", sysfs_root))

    def read(self) -> PowerSample:
        watts = None
        if self._power:
            values = [read_number(path) for path in self._power]
            watts = sum(v for v in values if v is not None) / 1e6  # µW
        energy = None
        if self._energy:
            values = [read_number(path) for path in self._energy]
            energy = sum(v for v in values if v is not None) / 1e6  # µJ
        return PowerSample(watts, energy_j=energy)


def open_source(sysfs_root: str = "/sys", name: Optional[str] = None) -> HwmonSource:
    return HwmonSource(sysfs_root, name)
