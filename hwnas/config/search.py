"""The ``search:`` section of a search space: how many trials, which sampler, where the study
and the kept bytes live, what is tried first, and the per-unit sensitivity switch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hwnas.config.fields import Fraction, Frozen, Seed
from hwnas.errors import excerpt


class SensitivitySettings(Frozen):
    """Per-unit sensitivity before the trials (hwnas/search/sensitivity.py): each unit alone at
    each precision the device runs and at these keep ratios (width knob's stages), exported
    and read on ``samples`` held-out samples; kept in the study, shown as a heatmap."""

    keep_ratios: list[Fraction] = [0.75, 0.5, 0.25]
    samples: Annotated[int, Field(ge=8, le=100000)] = 256

    @field_validator("keep_ratios")
    @classmethod
    def _below_one(cls, value: list[float]) -> list[float]:
        if any(ratio >= 1.0 for ratio in value):
            raise ValueError("keep ratios below 1.0 only (1.0 is the base model itself)")
        return sorted(set(value), reverse=True)


class SearchSettings(Frozen):
    n_trials: Annotated[int, Field(ge=1, le=100000)] = 20
    # engine: hwnas's own policy (hwnas/search/proposer.py, an Optuna sampler): one device, a
    # device pool, `hwnas worker`s and accelerator screening alike; tpe / nsga2 / random: an
    # Optuna sampler with the budgets as constraints; every one through the same pipeline
    sampler: Literal["engine", "tpe", "nsga2", "random"] = "tpe"
    seed: Seed = 0
    storage: str | None = None  # any Optuna storage URL; default: SQLite in the run folder
    study_name: str | None = None
    run_dir: Path | None = None  # default: runs/<space>--<device>
    # where kept ONNX bytes, model cards and the parent's weights go: file:///shared/path or
    # s3://bucket/prefix; default: the run folder's artifacts/ (one machine)
    artifact_store: str | None = None
    # candidates to try first in a new study (e.g. a known-good configuration), as Optuna
    # parameters: keep_<stage>, pruning_criterion, global_pruning_ratio, precision_<unit>
    enqueue: list[dict[str, float | str]] = []
    # per-unit sensitivity of the exported bytes, measured once before the trials (true, or
    # {keep_ratios, samples}); off by default: it exports two or three models per unit
    sensitivity: SensitivitySettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _taken_out(cls, data: Any) -> Any:
        """engine_order (an ordering by sensitivity, opt-in for a day in Dec. 2026) was taken
        out for not paying: `uniform`, what the engine does, is read as absent."""
        if isinstance(data, dict) and "engine_order" in data:
            if data["engine_order"] != "uniform":
                raise ValueError("engine_order was taken out: ordering the engine by per-unit "
                                 "sensitivity did not pay (benchmarks/README.md); leave it out")
            data = {k: v for k, v in data.items() if k != "engine_order"}
        return data

    @field_validator("sensitivity", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{excerpt(value)}: give true, false, or {{keep_ratios: [...], "
                             f"samples: N}}")
        return value
