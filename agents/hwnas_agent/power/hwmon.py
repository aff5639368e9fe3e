"""Generic hwmon meters (INA219/INA226 on a Pi 4, board meters, zenpower, amdgpu):
power*_input and power*_average in µW, energy*_input cumulative in µJ (then the figure has a
counter). The INA3221/INA238 of a Jetson have their own module.

Power channels are read with their ``powerN_label``. Distinct rails (zenpower's SVI2_P_Core
and SVI2_P_SoC) add up; channels that are limiter views of one power never do: amdgpu shows
an APU's single power sensor once per package power tracking limit (Van Gogh: power1
"slowPPT" and power2 "fastPPT", the same 9.04 W in both), so the figure is one of them, and
the description says which channel it is and which were left out.

Where the meter sits (in front of the whole board, or on one rail) is not visible in sysfs:
the profile says so with ``scope`` (default partial).
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable, check_scope
from hwnas_agent.power._files import read_number, read_text

USES_SYSFS = True

# Labels of channels that show the limit a power is held to, not a rail: each reads the same
# power (amdgpu: every power*_average is amdgpu_hwmon_show_power_avg, one sensor; newer
# kernels label the limits PPT and PPT1 and dropped power2_average as a duplicate).
LIMITER_VIEW_LABELS = frozenset({"slowppt", "fastppt", "ppt", "ppt1"})
_CHANNEL = re.compile(r"^power([0-9]+)_(input|average)$")


class Channel:
    """One powerN channel: the file read (``_input`` if the driver has it, else ``_average``),
    its label, and whether it is part of the figure (and if not, why)."""

    __slots__ = ("index", "path", "label", "used", "why_not")

    def __init__(self, index: int, path: str, label: Optional[str]) -> None:
        self.index = index
        self.path = path
        self.label = label
        self.used = True
        self.why_not = ""

    @property
    def name(self) -> str:
        file = os.path.basename(self.path)
        return "%s (%s)" % (file, self.label) if self.label else file

    def to_dict(self) -> Dict[str, Any]:
        entry = {"file": os.path.basename(self.path), "label": self.label, "used": self.used}
        if not self.used:
            entry["why_not"] = self.why_not
        return entry


def power_channels(folder: str) -> List[Channel]:
    """Every power channel of a chip, one file each: ``powerN_input`` (the current value,
    which the sampler wants) where present, else ``powerN_average``."""
    files: Dict[int, Dict[str, str]] = {}
    for path in glob.glob(os.path.join(folder, "power[0-9]*_*")):
        match = _CHANNEL.match(os.path.basename(path))
        if match:
            files.setdefault(int(match.group(1)), {})[match.group(2)] = path
    channels = []
    for index in sorted(files):
        path = files[index].get("input") or files[index]["average"]
        label = read_text(os.path.join(folder, "power%d_label" % index))
        channels.append(Channel(index, path, label or None))
    return channels


def choose_channels(channels: List[Channel]) -> Tuple[List[Channel], str]:
    """(channels whose sum is the figure, what was left out and why). Of limiter views of one
    power the lowest-numbered is kept: power1 (slowPPT on Van Gogh) is the channel every
    amdgpu kernel and chip has, so the figure stays the same file across kernels; the views
    read one sensor, so no other choice would be a better figure."""
    views = [c for c in channels if c.label and c.label.lower() in LIMITER_VIEW_LABELS]
    for extra in views[1:]:
        extra.used = False
        extra.why_not = "a limiter view of the same power as %s" % views[0].name
    left_out = ""
    if len(views) > 1:
        left_out = "; %s %s a limiter view of the same power, not added" % (
            " and ".join(c.label or "" for c in views[1:]), "is" if len(views) == 2 else "are")
    return [c for c in channels if c.used], left_out


class HwmonSource(PowerSource):
    kind = "hwmon"

    def __init__(self, sysfs_root: str = "/sys", name: Optional[str] = None,
                 scope: str = "partial") -> None:
        self.scope = check_scope(scope, "the 'hwmon' power source")
        for folder in sorted(glob.glob(os.path.join(sysfs_root, "class/hwmon/hwmon*"))):
            chip = read_text(os.path.join(folder, "name")) or ""
            if chip.startswith("ina3221") or (name is not None and chip != name):
                continue
            self.channels = power_channels(folder)
            used, left_out = choose_channels(self.channels)
            self._power = [c.path for c in used]
            self._energy = sorted(glob.glob(os.path.join(folder, "energy[0-9]*_input")))
            if self._power or self._energy:
                self.chip = chip
                names = ([os.path.basename(f) for f in self._energy] if self._energy
                         else [c.name for c in used])
                self.figure = "%s %s" % (chip, "+".join(names))
                self.has_energy_counter = bool(self._energy)
                self.covers = "hwmon meter %r (%s%s)" % (
                    chip, "energy counter" if self._energy else "power: " + ", ".join(
                        c.label or os.path.basename(c.path) for c in used), left_out)
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

    def describe(self) -> Dict[str, Any]:
        return dict(super().describe(), channels=[c.to_dict() for c in self.channels])


def open_source(sysfs_root: str = "/sys", name: Optional[str] = None,
                scope: str = "partial") -> HwmonSource:
    return HwmonSource(sysfs_root, name, scope)
