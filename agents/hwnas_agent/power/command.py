"""An external meter program that prints one reading per line (a USB meter's logger, a bench
supply's script, scripts/cpu_meter.py). What it may run comes from the device's own
configuration, never from the wire.

The line contract. A line that claims a power it does not state unambiguously is refused,
and the source with it (SensorUnavailable naming the line): a unit is never guessed.

- Blank lines and lines starting with ``#`` are skipped. ``# scope: model`` declares that
  the figures are computed, not measured: the result is then labelled ``model`` whatever
  the configuration says (a meter can lower its label, never raise it).
- Text lines: values carry units, glued or spaced: ``2.31 W``, ``2310 mW``, ``2310mW``,
  ``5.08 V 0.45 A 2.31 W``, ``USB: 5.062V, 0.1146A, 0.580W`` (µW/uW, kW; mV; mA/uA too), or a
  label naming the unit: ``power_w=2.31``, ``P[mW]=2310``. Exactly one power value is the
  reading; numbers without a unit beside it (a timestamp, a counter) are ignored. Two power
  values are refused; volts and amps without watts are refused (print the watts, or use CSV
  or JSON columns). Lines without a power value (an energy total in Wh or J, a lone voltage,
  ``timeout: 2 min``, a banner) are status lines and skipped. A line of nothing but numbers
  without units: one is read only when the source is configured with ``unit`` (W, mW, uW);
  two or more are refused, as nothing says which one is the power.
- JSON objects, one per line: top-level keys name their unit (``{"watts": 2.31}``,
  ``{"power_w": 2.31}``, ``{"power_mw": 2310}``); one power key is the reading, else one
  voltage and one current key (``{"voltage_v": 5.08, "current_a": 0.45}``) give V×A. Nested
  objects are other figures and ignored.
- CSV: a header line (cells separated by ``,``, ``;`` or tabs, no numbers) names the columns
  the same way (``time,voltage_V,current_A,power_W``); rows are read by those names, a time
  column is ignored, and V×A is used when there is no power column.
- Names carry units as a suffix ``_w``/``_mw``/``_v``/``_a``/``_ma``, a bracket ``power [mW]``
  or ``P(W)``, a bare unit ``W``, or the words watts/milliwatts/volts/amps. A power name
  without a unit (``power``, ``Power: 2.31``, the JSON of the um34c tool) is refused unless the
  source is configured with ``unit``, which then applies to it. Date and time tokens
  (``2026-11-21``, ``10:00:01.250``, ``2026-11-21T10:00:01Z``) are ignored everywhere.

Options: ``command`` (string or argv list), ``rate_hz`` (how often the meter prints),
``covers`` (what it measures, in words), ``scope`` (board_input, partial or model; default
partial), ``unit`` (W, mW or uW, for unit-less power values only).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Dict, List, Optional, Tuple, Union

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable, check_scope
from hwnas_agent.power._lines import LineProgram

USES_SYSFS = False
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT = r"(?:[µu]|[kKmM])?(?:Wh|WH|wh|W|w|V|v|A|a|J|j)"
_NUMBER_RE = re.compile(r"^%s$" % _NUMBER)
_VALUE_RE = re.compile(r"^(%s)(%s)$" % (_NUMBER, _UNIT))
_UNIT_RE = re.compile(r"^%s$" % _UNIT)
_TIME_RE = re.compile(r"^(?:\d{4}-\d{2}-\d{2}(?:[T ]?\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
                      r"|\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(?:Z|[+-]\d{2}:?\d{2})?$")
_SPLIT = re.compile(r"[\s,;]+")
_WORDS = {"watts": "w", "watt": "w", "milliwatts": "mw", "volts": "v", "amps": "a",
          "amperes": "a", "milliamps": "ma"}
DIMENSIONS = {"w": "power", "v": "voltage", "a": "current", "wh": "energy", "j": "energy"}
PREFIXES = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "k": 1e3}
BARE_UNITS = ("W", "mW", "uW")


def unit_scale(unit: str) -> Tuple[str, float]:
    """('power'|'voltage'|'current'|'energy', factor to W/V/A/J) of a unit such as mW."""
    lower = unit.lower()
    for base in ("wh", "w", "v", "a", "j"):
        if lower.endswith(base) and lower[:-len(base)] in PREFIXES:
            scale = PREFIXES[lower[:-len(base)]] * (3600.0 if base == "wh" else 1.0)
            return DIMENSIONS[base], scale
    raise SensorUnavailable("unknown unit %r" % unit)


def unit_of_name(name: str) -> Optional[Tuple[str, float]]:
    """The unit a column, key or label names (power_mw, P [W], watts), or None."""
    text = name.strip().lower()
    match = (re.search(r"[\[(]\s*(%s)\s*[\])]$" % _UNIT, text, re.I)
             or re.search(r"(?:^|[_\s\-.])(%s)$" % _UNIT, text, re.I))
    if match:
        return unit_scale(match.group(1))
    word = _WORDS.get(re.split(r"[_\s\-.]", text)[-1]) if text else None
    return unit_scale(word) if word else None


def _reading(powers: List[float], where: str) -> Optional[float]:
    if len(powers) > 1:
        raise SensorUnavailable("%d power values %s on one %s: which one is the reading?"
                                % (len(powers), powers, where))
    return powers[0] if powers else None


def _mentions_power(name: str) -> bool:
    return bool(re.search(r"power|watt", name, re.I))


class MeterLineParser:
    """Reads one meter line at a time (a CSV header is remembered); see the module docstring."""

    def __init__(self, unit: Optional[str] = None) -> None:
        if unit is not None and unit not in BARE_UNITS:
            raise SensorUnavailable("command power option unit=%r is not allowed; expected one "
                                    "of %s" % (unit, ", ".join(BARE_UNITS)))
        self.unit = unit
        self.columns: Optional[List[Optional[Tuple[str, float]]]] = None
        self.separator: Optional[str] = None
        self.declares_model = ""

    def __call__(self, line: str) -> Optional[PowerSample]:
        text = line.strip()
        if not text:
            return None
        if text.startswith("#"):
            if re.match(r"#\s*scope\s*:\s*model\b", text, re.I):
                self.declares_model = text
            return None
        if text.startswith("{"):
            return self._json(text)
        if self.columns is not None:
            return self._row(text)
        if self._header(text):
            return None
        return self._free(text)

    def _unit_of(self, name: str) -> Optional[Tuple[str, float]]:
        """A name's unit; a unit-less power name takes the configured unit, else is refused."""
        unit = unit_of_name(name)
        if unit is None and _mentions_power(name):
            if self.unit is None:
                raise SensorUnavailable("%r has no unit: name it %s_w or %s_mw, or configure "
                                        "the source with unit: W if the meter documents watts"
                                        % (name, name, name))
            unit = unit_scale(self.unit)
        return unit

    def _json(self, text: str) -> PowerSample:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SensorUnavailable("not a JSON object: %s" % exc)
        if not isinstance(data, dict):
            raise SensorUnavailable("a JSON line must be an object")
        values: Dict[str, List[float]] = {"power": [], "voltage": [], "current": []}
        for key, value in data.items():  # top level only: nested objects are other figures
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                unit = self._unit_of(key)
                if unit is not None and unit[0] in values:
                    values[unit[0]].append(float(value) * unit[1])
        return self._structured(values, "JSON object %s" % sorted(data))

    def _structured(self, values: Dict[str, List[float]], where: str) -> PowerSample:
        """A CSV row or JSON object: its power, or its one voltage times its one current."""
        watts = _reading(values["power"], where)
        if watts is None and len(values["voltage"]) == 1 and len(values["current"]) == 1:
            watts = values["voltage"][0] * values["current"][0]
        if watts is None:
            raise SensorUnavailable("no power in the %s; expected a key or column such as "
                                    "watts, power_w, power_mw, or voltage_v with current_a" % where)
        return PowerSample(watts)

    def _header(self, text: str) -> bool:
        separator = next((s for s in ("\t", ";", ",") if s in text), None)
        if separator is None or any(_NUMBER_RE.match(t) or _VALUE_RE.match(t) or _TIME_RE.match(t)
                                    for t in _SPLIT.split(text) if t):
            return False
        cells = [c.strip() for c in text.split(separator)]
        if not any(unit_of_name(c) or _mentions_power(c) for c in cells):
            return False  # words between commas ("connected, logging"): not a header
        units = [self._unit_of(c) for c in cells]
        dimensions = [u[0] for u in units if u]
        if dimensions.count("power") > 1:
            raise SensorUnavailable("the CSV header %r has %d power columns: which one is the "
                                    "reading?" % (text, dimensions.count("power")))
        if "power" not in dimensions and not (dimensions.count("voltage") == 1
                                              and dimensions.count("current") == 1):
            raise SensorUnavailable("the CSV header %r names no power column with a unit (e.g. "
                                    "power_w, power [mW]) nor one voltage and one current column"
                                    % text)
        self.columns, self.separator = units, separator
        return True

    def _row(self, text: str) -> Optional[PowerSample]:
        assert self.columns is not None and self.separator is not None
        cells = [c.strip() for c in text.split(self.separator)]
        if len(cells) != len(self.columns):
            raise SensorUnavailable("%d cells where the header has %d" % (len(cells), len(self.columns)))
        values: Dict[str, List[float]] = {"power": [], "voltage": [], "current": []}
        for cell, unit in zip(cells, self.columns):
            glued = _VALUE_RE.match(cell)
            if glued:
                unit = unit_scale(glued.group(2))
                cell = glued.group(1)
            if unit is not None and unit[0] in values and _NUMBER_RE.match(cell):
                values[unit[0]].append(float(cell) * unit[1])
        return self._structured(values, "CSV row")

    def _free(self, text: str) -> Optional[PowerSample]:
        tokens = [t for t in _SPLIT.split(text) if t]
        labelled: Dict[str, List[float]] = {d: [] for d in ("power", "voltage", "current", "energy")}
        bare: List[float] = []
        words = False
        index = 0
        while index < len(tokens):
            token, label = tokens[index], ""
            if "=" in token:
                label, _, token = token.partition("=")
            elif token.endswith(":") and index + 1 < len(tokens):  # "Power: 2.31 W"
                label, index = token[:-1], index + 1
                token = tokens[index]
            glued = _VALUE_RE.match(token)
            if _TIME_RE.match(token):
                pass
            elif glued:
                dimension, scale = unit_scale(glued.group(2))
                labelled[dimension].append(float(glued.group(1)) * scale)
            elif _NUMBER_RE.match(token):
                if index + 1 < len(tokens) and _UNIT_RE.match(tokens[index + 1]):
                    index += 1
                    unit: Optional[Tuple[str, float]] = unit_scale(tokens[index])
                else:
                    unit = self._unit_of(label) if label else None
                if unit is not None:
                    labelled[unit[0]].append(float(token) * unit[1])
                else:
                    bare.append(float(token))
            else:
                words = True
            index += 1
        watts = _reading(labelled["power"], "line")
        if watts is not None:
            return PowerSample(watts)  # unit-less numbers beside it: timestamps, counters
        if labelled["voltage"] and labelled["current"]:
            raise SensorUnavailable("volts and amps but no watts: print the power (5.08 V 0.45 A "
                                    "2.29 W), or CSV/JSON with voltage and current columns")
        if any(labelled.values()) or not bare or words:
            return None  # a status line (energy, a voltage, "timeout: 2 min"): not a reading
        if len(bare) > 1:
            raise SensorUnavailable("%d numbers without units %s: nothing says which one is the "
                                    "power; print units (2.31 W) or a CSV header" % (len(bare), bare))
        if self.unit is None:
            raise SensorUnavailable("a number without a unit (%g): print '2.31 W' or '2310 mW', "
                                    "or configure the source with unit: W" % bare[0])
        return PowerSample(bare[0] * unit_scale(self.unit)[1])


class CommandSource(PowerSource):
    kind = "command"

    def __init__(self, command: Union[str, List[str], None] = None, rate_hz: float = 10.0,
                 covers: str = "external meter", scope: str = "partial",
                 unit: Optional[str] = None) -> None:
        if not command:
            raise SensorUnavailable("the 'command' power source needs a command that prints "
                                    "one reading per line")
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        self.rate_hz = float(rate_hz)
        self.scope = check_scope(scope, "the 'command' power source")
        self.covers = "%s (%s)" % (covers, argv[0])
        self.figure = "meter reading"
        parser = MeterLineParser(unit)
        self._program = LineProgram(argv, parser, self.rate_hz)
        if parser.declares_model:
            self.scope = "model"
            self.covers += "; the meter declares itself a model, not a sensor (%s)" \
                % parser.declares_model.lstrip("# ")

    def read(self) -> PowerSample:
        return self._program.latest()

    def close(self) -> None:
        self._program.close()

    def describe(self) -> Dict[str, Any]:
        return dict(super().describe(), command=self._program.name)


def open_source(command: Union[str, List[str], None] = None, rate_hz: float = 10.0,
                covers: str = "external meter", scope: str = "partial",
                unit: Optional[str] = None) -> CommandSource:
    return CommandSource(command, rate_hz, covers, scope, unit)
