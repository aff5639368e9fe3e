"""Jetson power monitors in sysfs: INA3221 through the hwmon driver (JetPack 5/6/7) or the
iio driver (JetPack 4), and the carrier-board INA238 of Jetson Thor.

INA3221 hwmon: in[123]_label, in[123]_input bus voltage in mV, curr[123]_input in mA; no
power file: P[mW] = mV * mA / 1000. Labels containing NC are unconnected; channel 7 is the
sum of shunts and is skipped. iio: rail_name_N with in_powerN_input in mW.
INA238 (kernel driver ina238, Documentation/hwmon/ina238.rst): power1_input in µW, in1_input
bus mV, curr1_input mA. On Jetson AGX Thor it sits on the carrier board in front of
everything and is what NVIDIA's tegrastats calls VIN (NVIDIA forum thread 366461: "the
INA238 would measure the total input power"; jetson-stats PR #900 reports it as the total).

The board input is VDD_IN (Orin Nano/NX), POM_5V_IN (Nano) or VIN (Thor); the other rails
are parts of it and are never added to it. Modules without one (AGX Orin, Xavier) report the
sum of their rails, labelled as partial: it misses the carrier board.
"""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Tuple

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True
BOARD_INPUTS = ("VDD_IN", "POM_5V_IN", "VIN")


def hwmon_channels(sysfs_root: str) -> List[Tuple[str, str, str]]:
    """(label, millivolt file, milliamp file) of every connected INA3221 hwmon channel."""
    channels = []
    pattern = os.path.join(sysfs_root, "bus/i2c/drivers/ina3221/*/hwmon/hwmon*")
    for folder in sorted(glob.glob(pattern)):
        for channel in (1, 2, 3):
            label = read_text(os.path.join(folder, "in%d_label" % channel))
            if not label or "NC" in label.split("_") or label.startswith("NC"):
                continue
            channels.append((label, os.path.join(folder, "in%d_input" % channel),
                             os.path.join(folder, "curr%d_input" % channel)))
    return channels


def ina238_channels(sysfs_root: str) -> List[Tuple[str, str]]:
    """(rail name, microwatt file) of every INA238; unlabelled ones are Thor's VIN."""
    channels = []
    pattern = os.path.join(sysfs_root, "bus/i2c/drivers/ina238/*/hwmon/hwmon*")
    for folder in sorted(glob.glob(pattern)):
        power = os.path.join(folder, "power1_input")
        if os.path.exists(power):
            channels.append((read_text(os.path.join(folder, "label")) or "VIN", power))
    return channels


def iio_channels(sysfs_root: str) -> List[Tuple[str, str]]:
    """(rail name, milliwatt file) of every iio channel (JetPack 4)."""
    channels = []
    patterns = [os.path.join(sysfs_root, "bus/i2c/drivers/ina3221x/*/iio:device*"),
                os.path.join(sysfs_root, "devices/*/i2c-*/*-004*/iio_device")]
    for pattern in patterns:
        for folder in sorted(glob.glob(pattern)):
            for channel in (0, 1, 2):
                name = read_text(os.path.join(folder, "rail_name_%d" % channel))
                power = os.path.join(folder, "in_power%d_input" % channel)
                if name and os.path.exists(power):
                    channels.append((name, power))
    return channels


def board_total(rails_w: Dict[str, float]) -> Tuple[float, str, str, str]:
    """(watts, covers, scope, figure): the board input when there is one, else the rail sum."""
    for name in BOARD_INPUTS:
        if name in rails_w:
            return rails_w[name], "board input (%s)" % name, "board_input", name
    names = "+".join(sorted(rails_w))
    return (sum(rails_w.values()),
            "sum of INA3221 rails %s (the module has no board-input rail: excludes the carrier "
            "board and conversion losses)" % names, "partial", names)


class Ina3221Source(PowerSource):
    kind = "ina3221"

    def __init__(self, sysfs_root: str = "/sys") -> None:
        self._hwmon = hwmon_channels(sysfs_root)
        self._iio = [] if self._hwmon else iio_channels(sysfs_root)
        self._ina238 = ina238_channels(sysfs_root)
        if not self._hwmon and not self._iio and not self._ina238:
            raise SensorUnavailable("no INA3221 found under %s/bus/i2c/drivers, nor an INA238 "
                                    "(not a Jetson?)" % sysfs_root)
        self.driver = "hwmon" if self._hwmon or self._ina238 else "iio"
        interval = None
        if self._hwmon:
            interval = read_number(os.path.join(os.path.dirname(self._hwmon[0][1]), "update_interval"))
        self.rate_hz = 1000.0 / interval if interval else 10.0
        rails = self._rails()
        self._names = set(rails)
        _, self.covers, self.scope, self.figure = board_total(rails)

    def _rails(self) -> Dict[str, float]:
        rails = {}
        for label, millivolt_file, milliamp_file in self._hwmon:
            millivolts, milliamps = read_number(millivolt_file), read_number(milliamp_file)
            if millivolts is not None and milliamps is not None:
                rails[label] = millivolts * milliamps / 1e6  # mV * mA = µW
        for name, milliwatt_file in self._iio:
            milliwatts = read_number(milliwatt_file)
            if milliwatts is not None:
                rails[name] = milliwatts / 1000.0
        for name, microwatt_file in self._ina238:
            microwatts = read_number(microwatt_file)
            if microwatts is not None:
                rails[name] = microwatts / 1e6
        return rails

    def read(self) -> PowerSample:
        rails = self._rails()
        missing = self._names - set(rails)
        if missing:  # a sum over fewer rails, or no VIN, would be a different figure
            raise SensorUnavailable("INA rail(s) %s could not be read" % ", ".join(sorted(missing)))
        total = board_total(rails)[0]
        return PowerSample(total, rails_w=rails)

    def describe(self):  # type: ignore[no-untyped-def]
        return dict(super().describe(), driver=self.driver)


def open_source(sysfs_root: str = "/sys") -> Ina3221Source:
    return Ina3221Source(sysfs_root)
