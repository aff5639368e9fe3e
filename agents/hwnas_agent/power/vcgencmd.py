"""Raspberry Pi 5 PMIC rails from `vcgencmd pmic_read_adc`: power = Σ V×I over rails with both.

These are the PMIC's output rails: they miss the 5 V / USB load and conversion losses, so the
sum under-reads the board's input power, and results say so. A Pi 4 has no PMIC ADC and
answers `error=1 error_msg="Command not registered"`.
"""

from __future__ import annotations

import re
import subprocess
from typing import Dict, List, Optional, Tuple

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable

USES_SYSFS = False
_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(current|volt)\(\d+\)=([0-9.eE+-]+)[AV]\s*$")
COVERS = ("Raspberry Pi 5 PMIC output rails (sum of V*I); excludes the 5 V/USB load and "
          "conversion losses, so it under-reads the board input")


def parse_pmic(text: str) -> Tuple[float, Dict[str, float]]:
    if "Command not registered" in text or text.strip().startswith("error="):
        raise SensorUnavailable("vcgencmd has no pmic_read_adc here (a Raspberry Pi 4 or older "
                                "has no PMIC ADC): measure with an INA219/INA226 through hwmon "
                                "or a USB meter through the 'command' source")
    amps: Dict[str, float] = {}
    volts: Dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            rail, unit, _, value = match.groups()
            (amps if unit == "A" else volts)[rail] = float(value)
    rails = {rail: volts[rail] * amps[rail] for rail in amps if rail in volts}
    if not rails:
        raise SensorUnavailable("vcgencmd pmic_read_adc printed no rail with both current and "
                                "voltage")
    return sum(rails.values()), rails


class PmicSource(PowerSource):
    kind = "pi5_pmic"
    covers = COVERS
    scope = "partial"
    figure = "sum of PMIC rails"
    rate_hz = 5.0  # one call takes about 0.1 s

    def __init__(self, command: Optional[List[str]] = None) -> None:
        self._argv = list(command or ["vcgencmd"]) + ["pmic_read_adc"]
        self.read()

    def read(self) -> PowerSample:
        try:
            done = subprocess.run(self._argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SensorUnavailable("cannot run %s: %s" % (" ".join(self._argv), exc))
        total, rails = parse_pmic(done.stdout)
        return PowerSample(total, rails_w=rails)


def open_source(command: Optional[List[str]] = None) -> PmicSource:
    return PmicSource(command)
