"""Precision: each unit (stage or weighted layer) runs in one of the precisions the device
supports; the plan is realised in the exported bytes (hwnas/export/precision.py: QDQ, float16
islands, weight-only int8)."""

from __future__ import annotations

from typing import Annotated, Any, Hashable, Literal, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution
from pydantic import Field

from hwnas.config.fields import Frozen, Precision
from hwnas.errors import ConfigError
from hwnas.knobs.base import Knob, ModelParts, Pick, pairs

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
QUANTIZED = ("int8", "a16w8")  # precisions with calibrated activation ranges


class PrecisionSettings(Frozen):
    granularity: Literal["stage", "layer"] = "stage"
    choices: list[Precision] | None = None  # default: every precision the device supports
    # how int8/a16w8 activation ranges are calibrated; more than one makes it a searched knob
    calibration: Annotated[list[CalibrationMethod], Field(min_length=1)] = ["minmax"]


class PrecisionKnob(Knob):
    name = "precision"
    config = PrecisionSettings
    order = 20
    ladder_role = "ladders"  # one uniform ladder per precision

    def units(self, settings: Any, model: ModelParts) -> dict[str, list[str]]:
        """Precision unit -> module names (export/onnx.py maps them onto ONNX nodes)."""
        from hwnas.compress.prune import named_modules
        from hwnas.export.onnx import plan_units, precision_units

        stages = {stage: named_modules(model.model, prefixes, f"base_model.stages.{stage}")
                  for stage, prefixes in model.stages.items()}
        modules = precision_units(model.model, stages,
                                  settings.granularity if settings else "stage")
        return {unit: [name for name, owner in modules.items() if owner == unit]
                for unit in plan_units(modules)}

    def shape(self, settings: Any, units: Sequence[str], device: Any
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        if settings is None:
            return tuple(units), ("fp32",)
        wanted = settings.choices or device.precisions
        unsupported = sorted(set(wanted) - set(device.precisions))
        if unsupported:
            raise ConfigError(f"knobs.precision.choices: {unsupported} not supported by device "
                              f"{device.name}; it supports: {', '.join(device.precisions)}")
        return tuple(units), tuple(dict.fromkeys(wanted))

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {f"precision_{unit}": CategoricalDistribution(list(choices)) for unit in units}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable:
        return self.normalize({unit: str(pick(f"precision_{unit}", "fp32")) for unit in units})

    def neutral(self, units: Sequence[str]) -> Hashable:
        return self.normalize({unit: "fp32" for unit in units})

    def uniform(self, params: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
        """One precision for the whole model, for each precision allowed."""
        first = next(iter(params.values()), None)
        choices = first.choices if isinstance(first, CategoricalDistribution) else ()
        return [{name: precision for name in params} for precision in choices] or [{}]

    def normalize(self, value: Any) -> Hashable:
        return pairs({unit: str(p) for unit, p in dict(value).items()})

    def record(self, value: Any) -> dict[str, Any]:
        return {"precision_plan": dict(value)}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        return self.normalize(data["precision_plan"]) if "precision_plan" in data else None

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return f"prec[{' '.join(f'{k}:{v}' for k, v in value)}]" if value else ""

    def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
        return ()  # pre-flight checks structure on the fp32 export
