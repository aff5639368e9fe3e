"""The frozen base of every config record and the field types several sections share.

Every model forbids unknown keys: a typo in a YAML file is an error, never ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hwnas.errors import excerpt

# what each means in the exported bytes: hwnas/export/precision.py
PRECISIONS = ("fp32", "fp16", "int8", "a16w8", "int8_weight_only")
Precision = Literal["fp32", "fp16", "int8", "a16w8", "int8_weight_only"]
ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
# what numpy's and Optuna's seeded generators accept (np.random.seed, RandomState)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Positive = Annotated[float, Field(gt=0)]


class Frozen(BaseModel):
    # no number in a config is infinite or NaN: YAML reads .inf, .nan and 1e400 as such, and a
    # budget of inf would look set while it limits nothing (leave a budget out for no limit)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_entry_point(value: str) -> str:
    if not ENTRY_POINT.match(value):
        raise ValueError(f"{excerpt(value)} is not an entry point; write it as 'package.module:function'")
    return value


def _check_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{excerpt(value)}: use letters, digits, '.', '_' and '-' (it names files)")
    return value


EntryPoint = Annotated[str, AfterValidator(_check_entry_point)]
Name = Annotated[str, AfterValidator(_check_name)]
