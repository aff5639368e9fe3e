"""power_supply class (Qualcomm/Android-class boards, laptops): voltage_now µV, current_now
µA, power_now µW (Documentation/ABI/testing/sysfs-class-power). The sign of current_now
differs between drivers (negative means discharging on newer ABIs), so the magnitude is used.

Not every entry measures the device:
- USB-C entries of the UCSI driver (``ucsi-source-psy-*``) report the negotiated USB-PD
  contract: current_now is the operating current the sink requested and equals current_max
  (20 V x 3.25 A = "65 W" whatever the board draws). jetson-stats PR #900 skips them for this
  reason; so does any supply whose current_now equals its current_max.
- A battery measures the device only while it powers it: status ``Discharging``. Charging,
  full or not charging, the device runs from its adapter and the battery current is not its
  draw. The status is checked at every read: plugging a charger in mid-job loses the sensor.
Such entries give SensorUnavailable with the reason, never 0 W or 65 W.
"""

from __future__ import annotations

import glob
import os
from typing import List, Optional, Tuple

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True


def not_a_measurement(folder: str) -> Optional[str]:
    """Why this supply's figures are not the device's draw, or None if they are."""
    name = os.path.basename(folder)
    supply_type = read_text(os.path.join(folder, "type"))
    has_power = os.path.exists(os.path.join(folder, "power_now"))
    has_vi = all(os.path.exists(os.path.join(folder, f)) for f in ("voltage_now", "current_now"))
    if not has_power and not has_vi:
        return "no power_now nor voltage_now/current_now"
    if name.startswith("ucsi-source-psy-"):
        return ("a USB-C (UCSI) entry: it reports the negotiated USB-PD contract, not a "
                "measurement")
    if read_text(os.path.join(folder, "online")) == "0":
        return "offline"
    if supply_type == "Battery":
        status = read_text(os.path.join(folder, "status"))
        if status != "Discharging":
            return ("a battery with status %r: only a discharging battery powers the device, "
                    "so its current is not the device's draw (run on battery, or measure the "
                    "input with a meter)" % status)
        return None
    current_now = read_number(os.path.join(folder, "current_now"))
    current_max = read_number(os.path.join(folder, "current_max"))
    if current_now is not None and current_max is not None and current_now == current_max:
        return ("current_now equals current_max (%d µA): a negotiated contract or limit, not a "
                "reading" % current_now)
    return None


class PowerSupplySource(PowerSource):
    kind = "power_supply"
    rate_hz = 10.0

    def __init__(self, sysfs_root: str = "/sys", name: Optional[str] = None) -> None:
        refused: List[Tuple[str, str]] = []
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/power_supply/*"))):
            supply = os.path.basename(folder)
            if name is not None and supply != name:
                continue
            reason = not_a_measurement(folder)
            if reason is not None:
                refused.append((supply, reason))
                continue
            self._folder = folder
            self._has_power = os.path.exists(os.path.join(folder, "power_now"))
            self.supply_type = read_text(os.path.join(folder, "type")) or "supply"
            self.figure = supply
            # a discharging battery or a measured input feeds the whole device; other types
            # (a fuel gauge of unknown place) are not claimed to
            self.scope = "board_input" if self.supply_type in ("Battery", "USB", "Mains") \
                else "partial"
            self.covers = "power_supply %s (%s)%s" % (supply, self.supply_type, {
                "Battery": ": discharge power of the battery that powers the whole device",
                "USB": ": the device's measured USB input", "Mains": ": the device's measured input",
            }.get(self.supply_type, ": where it sits is not stated by the driver"))
            return
        raise SensorUnavailable("no power_supply measures this device%s%s" % (
            " named %r" % name if name else "",
            "".join("; %s: %s" % item for item in refused) if refused else
            " (none under %s/class/power_supply)" % sysfs_root))

    def read(self) -> PowerSample:
        reason = not_a_measurement(self._folder)
        if reason is not None:
            raise SensorUnavailable("power_supply %s is no longer a measurement: %s"
                                    % (self.figure, reason))
        if self._has_power:
            microwatts = read_number(os.path.join(self._folder, "power_now"))
            if microwatts is None:
                raise SensorUnavailable("power_supply %s: power_now could not be read" % self.figure)
            return PowerSample(abs(microwatts) / 1e6)
        microvolts = read_number(os.path.join(self._folder, "voltage_now"))
        microamps = read_number(os.path.join(self._folder, "current_now"))
        if microvolts is None or microamps is None:
            raise SensorUnavailable("power_supply %s: voltage_now/current_now could not be read"
                                    % self.figure)
        return PowerSample(abs(microvolts * microamps) / 1e12)


def open_source(sysfs_root: str = "/sys", name: Optional[str] = None) -> PowerSupplySource:
    return PowerSupplySource(sysfs_root, name)
