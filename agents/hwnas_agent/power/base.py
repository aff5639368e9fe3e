"""Power sensors: one small module per kind, one contract.

A source is built from its options (sysfs root, command path: parameters, never test
switches) and offers ``read() -> PowerSample``: watts at a monotonic time, and where the
hardware has one, the figure's cumulative energy counter in joules (RAPL, hwmon energy,
NVML), which gives energy exactly instead of integrating samples.

Every source states what its figure is, so that a result is labelled honestly:
``covers`` (a sentence), ``scope`` (one of SCOPES: the whole board's input, a part of the
board, or a model that is not a sensor at all), ``figure`` (the rail or domain the watts
and energy are, e.g. ``VIN``, ``psys``, ``package-0+package-0:dram``) and whether the
figure has an energy counter. Other rails or domains the sensor shows come in
``PowerSample.rails_w``, each with its own name, for comparison only.

A source that cannot give a figure it can stand behind raises SensorUnavailable with the
reason and what to do, at open time where it can know, else at read time.
"""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any, Dict, List, Optional

from hwnas_agent.protocol import POWER_KINDS

# kind (protocol.POWER_KINDS, the one list of names) -> its module; a kind's module has its
# name unless listed here
_MODULE_OF = {"pi5_pmic": "vcgencmd"}
KINDS = {kind: "hwnas_agent.power." + _MODULE_OF.get(kind, kind) for kind in POWER_KINDS}
# the sensors detect() looks for, best first; a meter program is configured, never detected
DETECTED = tuple(kind for kind in POWER_KINDS if kind != "command")

# board_input: everything the board draws at its input (VDD_IN, VIN, a meter at the plug);
# partial: some rails or domains only (CPU package, GPU, PMIC outputs, a sum of module rails);
# model: a figure computed from something else (scripts/cpu_meter.py): never a measurement.
SCOPES = ("board_input", "partial", "model")


class SensorUnavailable(Exception):
    """This device has no such sensor, or it cannot be read; the message says what to do."""


class PowerSample:
    __slots__ = ("time_s", "watts", "energy_j", "rails_w")

    def __init__(self, watts: Optional[float], energy_j: Optional[float] = None,
                 rails_w: Optional[Dict[str, float]] = None, time_s: Optional[float] = None) -> None:
        self.time_s = time.monotonic() if time_s is None else time_s
        self.watts = watts
        self.energy_j = energy_j
        self.rails_w = rails_w or {}


class PowerSource:
    """Contract: kind, covers, scope, figure, rate_hz, has_energy_counter, read(), close()."""

    kind = ""
    covers = ""
    scope = "partial"
    figure = ""
    rate_hz = 10.0
    has_energy_counter = False

    def read(self) -> PowerSample:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "covers": self.covers, "scope": self.scope,
                "figure": self.figure, "rate_hz": self.rate_hz,
                "energy_counter": self.has_energy_counter}


def check_scope(scope: Any, where: str) -> str:
    if scope not in SCOPES:
        raise SensorUnavailable("%s: scope %r is not allowed; expected one of %s"
                                % (where, scope, ", ".join(SCOPES)))
    return str(scope)


def open_source(kind: str, options: Optional[Dict[str, Any]] = None) -> PowerSource:
    module_name = KINDS.get(kind)
    if module_name is None:
        raise SensorUnavailable("unknown power source %r; allowed: %s" % (kind, ", ".join(KINDS)))
    module = importlib.import_module(module_name)
    allowed = inspect.signature(module.open_source).parameters
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise SensorUnavailable("power source %r: bad options %s; allowed: %s"
                                % (kind, ", ".join(unknown), ", ".join(allowed)))
    return module.open_source(**(options or {}))


def detect(sysfs_root: str = "/sys") -> List[Dict[str, Any]]:
    """Every power source this device offers, best first (board input before partial rails)."""
    found = []
    for kind in DETECTED:
        module = importlib.import_module(KINDS[kind])
        try:
            source = module.open_source(sysfs_root=sysfs_root) if module.USES_SYSFS \
                else module.open_source()
            try:
                sample = source.read()
                found.append(dict(source.describe(), watts_now=sample.watts))
            finally:
                source.close()
        except SensorUnavailable:
            continue
        except Exception as exc:  # a sensor that misbehaves is reported, not fatal
            found.append({"kind": kind, "error": repr(exc)})
    return found
