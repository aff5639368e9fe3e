"""tegrastats lines of JetPack 4, 5/6 and 7; the agent runs `tegrastats --interval MS`.

JetPack 5/6: `VDD_IN 17946mW/15710mW` (current/average); JetPack 7: three values
`VDD_GPU_SOC 5139mW/5139mW/5139mW` and no VDD_IN; before JetPack 5: no unit, in mW
(`POM_5V_IN 933/933`). Only the first (current) value is used: the others are the tool's
running figures, not an average over our run.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

from hwnas_agent.power import PowerSample, PowerSource
from hwnas_agent.power._lines import LineProgram
from hwnas_agent.power.ina3221 import board_total

USES_SYSFS = False
_RAIL = re.compile(r"(?:(?<=\s)|^)([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_TEMPERATURE = re.compile(r"(?:(?<=\s)|^)([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C(?:/[-\d.]+C)?(?=\s|$)")


def parse_line(line: str) -> Optional[Dict[str, object]]:
    """Rails in W, the board total and what it covers, and temperatures in °C; None if no rails."""
    rails = {m.group(1): int(m.group(2)) / 1000.0 for m in _RAIL.finditer(line)}
    if not rails:
        return None
    total, covers = board_total(rails)
    temperatures = {m.group(1): float(m.group(2)) for m in _TEMPERATURE.finditer(line)}
    return {"rails_w": rails, "total_w": total, "covers": covers, "temperatures_c": temperatures}


def _sample(line: str) -> Optional[PowerSample]:
    parsed = parse_line(line)
    if parsed is None:
        return None
    return PowerSample(parsed["total_w"], rails_w=parsed["rails_w"])  # type: ignore[arg-type]


class TegrastatsSource(PowerSource):
    kind = "tegrastats"

    def __init__(self, command: Optional[List[str]] = None, interval_ms: int = 100) -> None:
        argv = list(command or ["tegrastats"]) + ["--interval", str(int(interval_ms))]
        self.rate_hz = 1000.0 / interval_ms
        self._program = LineProgram(argv, _sample)
        self.covers = board_total(self._program.latest().rails_w)[1]

    def read(self) -> PowerSample:
        return self._program.latest()

    def close(self) -> None:
        self._program.close()


def open_source(command: Optional[List[str]] = None, interval_ms: int = 100) -> TegrastatsSource:
    return TegrastatsSource(command, interval_ms)
