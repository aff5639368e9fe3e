"""power_supply class (Qualcomm/Android-class boards, laptops): voltage_now µV,
current_now µA, power_now µW. The sign of current_now differs between drivers (negative
means discharging on newer ABIs), so the magnitude is used."""

from __future__ import annotations

import glob
import os
from typing import Optional

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True


class PowerSupplySource(PowerSource):
    kind = "power_supply"
    rate_hz = 10.0

    def __init__(self, sysfs_root: str = "/sys", name: Optional[str] = None) -> None:
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/power_supply/*"))):
            supply = os.path.basename(folder)
            if name is not None and supply != name:
                continue
            has_power = os.path.exists(os.path.join(folder, "power_now"))
            has_vi = all(os.path.exists(os.path.join(folder, f))
                         for f in ("voltage_now", "current_now"))
            if has_power or has_vi:
                self._folder, self._has_power = folder, has_power
                kind = read_text(os.path.join(folder, "type")) or "supply"
                self.covers = "power_supply %s (%s)" % (supply, kind)
                return
        raise SensorUnavailable("no power_supply with power_now or voltage_now/current_now%s"
                                % (" named %r" % name if name else ""))

    def read(self) -> PowerSample:
        if self._has_power:
            microwatts = read_number(os.path.join(self._folder, "power_now"))
            return PowerSample(abs(microwatts) / 1e6 if microwatts is not None else None)
        microvolts = read_number(os.path.join(self._folder, "voltage_now"))
        microamps = read_number(os.path.join(self._folder, "current_now"))
        if microvolts is None or microamps is None:
            return PowerSample(None)
        return PowerSample(abs(microvolts * microamps) / 1e12)


def open_source(sysfs_root: str = "/sys", name: Optional[str] = None) -> PowerSupplySource:
    return PowerSupplySource(sysfs_root, name)
