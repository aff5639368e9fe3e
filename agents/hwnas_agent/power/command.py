"""Any external meter program that prints watts, one reading per line (e.g. a USB meter's
logger). The first number on a line is the reading; lines without one are skipped."""

from __future__ import annotations

import re
import shlex
from typing import List, Optional, Union

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable
from hwnas_agent.power._lines import LineProgram

USES_SYSFS = False
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_watts(line: str) -> Optional[PowerSample]:
    match = _NUMBER.search(line)
    return PowerSample(float(match.group(0))) if match else None


class CommandSource(PowerSource):
    kind = "command"

    def __init__(self, command: Union[str, List[str], None] = None, rate_hz: float = 10.0,
                 covers: str = "external meter") -> None:
        if not command:
            raise SensorUnavailable("the 'command' power source needs a command that prints "
                                    "watts per line")
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        self.rate_hz, self.covers = float(rate_hz), "%s (%s)" % (covers, argv[0])
        self._program = LineProgram(argv, parse_watts)

    def read(self) -> PowerSample:
        return self._program.latest()

    def close(self) -> None:
        self._program.close()


def open_source(command: Union[str, List[str], None] = None, rate_hz: float = 10.0,
                covers: str = "external meter") -> CommandSource:
    return CommandSource(command, rate_hz, covers)
