"""YAML -> validated frozen records. Every error names the file, the key and what is allowed."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hwnas.config.models import (
    Budgets,
    DeviceProfile,
    SearchSpace,
)
from hwnas.errors import ConfigError

__all__ = ["Budgets", "DeviceProfile", "SearchSpace", "load_device_profile", "load_search_space",
           "effective_budgets"]

RecordT = TypeVar("RecordT", bound=BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that holds the key at ``loc`` (loc ends with that key)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return []
        if isinstance(part, str) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return sorted(model.model_fields) if model is not None else []


def _describe(error: dict[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(root, loc))
        return f"key '{key}': unknown key; allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"key '{key}': required but missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"key '{key}': {message} (got {error.get('input')!r})"


def load_record(path: str | Path, record: type[RecordT], what: str) -> RecordT:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a YAML mapping of keys "
                          f"({', '.join(sorted(record.model_fields))}), not {type(data).__name__}")
    try:
        return record.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error, record) for error in exc.errors()]
        raise ConfigError(f"{path}: invalid {what}:\n  " + "\n  ".join(lines)) from None


def load_search_space(path: str | Path) -> SearchSpace:
    return load_record(path, SearchSpace, "search space")


def load_device_profile(path: str | Path) -> DeviceProfile:
    return load_record(path, DeviceProfile, "device profile")


def effective_budgets(space: SearchSpace, device: DeviceProfile) -> Budgets:
    """The search space's budgets win; the device profile's defaults fill the gaps."""
    return Budgets(
        latency_p90_ms=space.budgets.latency_p90_ms or device.budgets.latency_p90_ms,
        model_size_mb=space.budgets.model_size_mb or device.budgets.model_size_mb,
    )
