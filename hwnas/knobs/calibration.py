"""Calibration: how int8/a16w8 activation ranges are found (minmax, entropy, percentile).
Set in ``knobs.precision.calibration``; searched, define-by-run, only in candidates whose plan
quantizes activations (elsewhere it would not change the bytes)."""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution

from hwnas.knobs.base import Knob, Pick
from hwnas.knobs.precision import QUANTIZED


class Calibration(Knob):
    name = "calibration"
    config = None  # its choices live in the precision section
    order = 30  # after precision: it depends on the plan

    def settings(self, knobs: Any) -> Any:
        precision = getattr(knobs, "precision", None)
        return precision.calibration if precision is not None else None

    def shape(self, settings: Any, units: Sequence[str], device: Any
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return (), tuple(settings or ())

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {"calibration_method": CategoricalDistribution(settings)} if len(settings) > 1 \
            else {}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable:
        method = settings[0] if settings else "minmax"
        plan = dict(chosen.get("precision") or ())  # type: ignore[arg-type]
        if any(p in QUANTIZED for p in plan.values()):
            method = pick("calibration_method", method)
        return str(method)

    def neutral(self, units: Sequence[str]) -> Hashable:
        return "minmax"

    def record(self, value: Any) -> dict[str, Any]:
        return {"calibration_method": value}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        return str(data.get("calibration_method", "minmax"))  # stored before it was a knob

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        plan = dict(values.get("precision") or ())
        return f"cal={value}" if any(p in QUANTIZED for p in plan.values()) else ""
