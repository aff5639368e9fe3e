"""tegrastats lines of JetPack 4, 5/6 and 7; the agent runs `tegrastats --interval MS`.

JetPack 5/6: `VDD_IN 17946mW/15710mW` (current/average); JetPack 7: three values
`VDD_GPU_SOC 5139mW/5139mW/5139mW`; before JetPack 5: no unit, in mW (`POM_5V_IN 933/933`).
Only the first (current) value is used: the others are the tool's running figures, not an
average over our run. Values can be negative (Thor at idle: `VDD_GPU -392mW/-392mW`, an
offset of the monitor): they are read as they are. On Thor, `VIN` (the carrier-board INA238)
is the board input; VDD_GPU, VDD_CPU_SOC_MSS and VIN_SYS_5V0 are parts of it.

Run without the privileges it needs, tegrastats still prints RAM/CPU/temperatures but no
rails: that is refused at once with what to do, rather than waiting for a rail that never comes.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._lines import LineProgram
from hwnas_agent.power.ina3221 import board_total

USES_SYSFS = False
_VALUE = r"(-?\d+)(?:mW)?"
_RAIL = re.compile(r"(?:(?<=\s)|^)([A-Z][A-Z0-9_]*) %s/%s(?:/%s)?(?=\s|$)" % (_VALUE, _VALUE, _VALUE))
_TEMPERATURE = re.compile(r"(?:(?<=\s)|^)([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C(?:/[-\d.]+C)?(?=\s|$)")
_TEGRASTATS_LINE = re.compile(r"(?:^|\s)RAM \d+/\d+MB")


def parse_line(line: str) -> Optional[Dict[str, object]]:
    """Rails in W, the board total, what it covers, and temperatures in °C; None if no rails."""
    rails = {m.group(1): int(m.group(2)) / 1000.0 for m in _RAIL.finditer(line)}
    if not rails:
        return None
    total, covers, scope, figure = board_total(rails)
    temperatures = {m.group(1): float(m.group(2)) for m in _TEMPERATURE.finditer(line)}
    return {"rails_w": rails, "total_w": total, "covers": covers, "scope": scope,
            "figure": figure, "temperatures_c": temperatures}


def no_rails_advice() -> str:
    user = "uid %d" % os.getuid() if hasattr(os, "getuid") else "this user"
    groups = ""
    if hasattr(os, "getgroups"):
        try:
            import grp

            groups = ", groups " + ",".join(sorted(grp.getgrgid(g).gr_name for g in os.getgroups()))
        except (ImportError, KeyError):
            groups = ", groups " + ",".join(str(g) for g in os.getgroups())
    return ("tegrastats prints no power rails for %s%s: it reads the power monitors only as "
            "root. Run the agent as root, or give it `command: [sudo, -n, tegrastats]` with a "
            "sudoers rule for tegrastats alone, or use the 'ina3221' source if this user may "
            "read /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/curr1_input (a udev rule can give "
            "one of the groups above read access to those files)" % (user, groups))


def _sample(line: str) -> Optional[PowerSample]:
    parsed = parse_line(line)
    if parsed is None:
        if _TEGRASTATS_LINE.search(line):  # a real tegrastats line, but without any rail
            raise SensorUnavailable(no_rails_advice())
        return None
    return PowerSample(parsed["total_w"], rails_w=parsed["rails_w"])  # type: ignore[arg-type]


class TegrastatsSource(PowerSource):
    kind = "tegrastats"

    def __init__(self, command: Optional[List[str]] = None, interval_ms: int = 100) -> None:
        argv = list(command or ["tegrastats"]) + ["--interval", str(int(interval_ms))]
        self.rate_hz = 1000.0 / interval_ms
        self._program = LineProgram(argv, _sample, self.rate_hz)
        first = self._program.latest().rails_w
        self._names = set(first)
        _, self.covers, self.scope, self.figure = board_total(first)

    def read(self) -> PowerSample:
        sample = self._program.latest()
        missing = self._names - set(sample.rails_w)
        if missing:  # the same figure from other rails would be another figure
            raise SensorUnavailable("tegrastats stopped printing rail(s) %s"
                                    % ", ".join(sorted(missing)))
        return sample

    def close(self) -> None:
        self._program.close()


def open_source(command: Optional[List[str]] = None, interval_ms: int = 100) -> TegrastatsSource:
    return TegrastatsSource(command, interval_ms)
