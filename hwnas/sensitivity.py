"""Per-unit sensitivity as a study keeps it: for each unit and each setting (a precision the
device runs, a keep ratio of a width stage) with only that unit changed, the output fidelity
and the accuracy drop of the exported bytes against the unchanged base model's, on held-out
data. Measured by hwnas/search/sensitivity.py; read here by the report (which never imports
the search)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ATTR = "unit_sensitivity"  # a study's user attribute: cache key -> UnitSensitivity.to_dict()
PRECISION, KEEP = "precision", "keep_ratio"


def setting_label(kind: str, value: str | float) -> str:
    """One column's name: the precision itself, or 'keep 0.5'."""
    return str(value) if kind == PRECISION else f"keep {float(value):g}"


@dataclasses.dataclass(frozen=True)
class SensitivityCell:
    """One unit at one setting, every other unit as in the base model."""

    unit: str
    kind: str  # PRECISION | KEEP
    value: str  # the precision ("int8"), or the keep ratio as text ("0.5")
    cosine_mean: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None  # base accuracy minus this one, on the same samples
    size_bytes: int | None = None
    error: str | None = None  # why this variant could not be built or read

    @property
    def setting(self) -> str:
        return setting_label(self.kind, self.value)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SensitivityCell":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class UnitSensitivity:
    key: str  # sha256 of the base model's weights and of every setting that shapes the result
    base_weights_sha256: str
    base_accuracy: float  # the unchanged base's exported bytes, on the same samples
    samples: int
    runtime: str  # where the variants' outputs were computed
    cells: tuple[SensitivityCell, ...]

    def units(self) -> list[str]:
        return list(dict.fromkeys(c.unit for c in self.cells))

    def settings(self) -> list[str]:
        return list(dict.fromkeys(c.setting for c in self.cells))

    def cell(self, unit: str, setting: str) -> SensitivityCell | None:
        return next((c for c in self.cells if c.unit == unit and c.setting == setting), None)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "base_weights_sha256": self.base_weights_sha256,
                "base_accuracy": self.base_accuracy, "samples": self.samples,
                "runtime": self.runtime, "cells": [c.to_dict() for c in self.cells]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UnitSensitivity":
        return cls(str(data["key"]), str(data["base_weights_sha256"]),
                   float(data["base_accuracy"]), int(data["samples"]), str(data["runtime"]),
                   tuple(SensitivityCell.from_dict(c) for c in data.get("cells") or ()))


def kept(user_attrs: Mapping[str, Any]) -> list[UnitSensitivity]:
    """Every sensitivity table a study keeps (one per base model and settings)."""
    return [UnitSensitivity.from_dict(entry) for entry in (user_attrs.get(ATTR) or {}).values()]


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sensitivity_table(found: UnitSensitivity) -> str:
    """The text table: one row per unit, per setting its accuracy drop and mean cosine."""
    settings = found.settings()
    header = ["unit"] + [f"{s}: drop / cos" for s in settings]
    rows = [header]
    for unit in found.units():
        row = [unit]
        for setting in settings:
            cell = found.cell(unit, setting)
            if cell is None:
                row.append("")
            elif cell.error is not None:
                row.append("failed")
            else:
                row.append(f"{_figure(cell.accuracy_drop, 4)} / {_figure(cell.cosine_mean, 5)}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"(base accuracy {found.base_accuracy:.4f} on {found.samples} held-out samples; "
                 f"{found.runtime}; drop = base accuracy minus the variant's)")
    failed = [c for c in found.cells if c.error is not None]
    lines += [f"{c.unit} {c.setting} failed: {c.error}" for c in failed]
    return "\n".join(lines)
