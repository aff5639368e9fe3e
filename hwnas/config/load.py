"""Loading YAML into validated frozen records; every error names the file, the key and what
is allowed."""

from __future__ import annotations

import contextlib
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.config.safe_yaml import read_yaml
from hwnas.errors import ConfigError, excerpt

RecordT = TypeVar("RecordT", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation such as ``X | None``, ``list[X]``, ``A | B``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return found


def _tag(model: type[BaseModel]) -> Any:
    """The discriminator value of a union member (its ``kind`` literal), if it has one."""
    field = model.model_fields.get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """The key as the user wrote it (without pydantic's union tags) and the keys allowed
    beside its last part."""
    models, shown = [root], []
    for index, part in enumerate(loc):
        tagged = [m for m in models if _tag(m) == part]
        if tagged:  # pydantic names the union member it tried: not a key of the file
            models = tagged
            continue
        shown.append(str(part))
        if index == len(loc) - 1 or not isinstance(part, str):
            continue
        models = [m for model in models if part in model.model_fields
                  for m in _models_in(model.model_fields[part].annotation)] or models
    allowed = sorted(models[0].model_fields) if len(models) == 1 else []
    return ".".join(shown) or "(top level)", allowed


def _describe(error: dict[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
    key, allowed = _walk(root, loc)
    if error["type"] == "extra_forbidden":
        # a knob's section of a package that is not installed here reads as an unknown key
        plug_in = " (a knob from a package needs that package installed: entry point group " \
            "hwnas.knobs)" if key.startswith("knobs.") and key.count(".") == 1 else ""
        return f"key '{key}': unknown key; allowed keys here: {', '.join(allowed)}{plug_in}"
    if error["type"] == "missing":
        return f"key '{key}': required but missing"
    if error["type"] == "union_tag_invalid":
        return f"key '{key}.kind': {error['msg']} (got {excerpt(error['input'].get('kind'))})" \
            if isinstance(error.get("input"), dict) else f"key '{key}': {error['msg']}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "finite_number":
        message = ("expected a finite number: YAML reads .inf, .nan and numbers beyond 1.8e308 "
                   "(such as 1e400) as infinite or not a number; leave a budget out for no limit")
    return f"key '{key}': {message} (got {excerpt(error.get('input'))})"


def load_record(path: str | Path, record: type[RecordT], what: str) -> RecordT:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: a {what} is UTF-8 text; byte {exc.start} is not "
                          f"({exc.reason})") from None
    data = read_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a YAML mapping of keys "
                          f"({', '.join(sorted(record.model_fields))}), not {type(data).__name__}")
    try:
        return record.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error, record) for error in exc.errors()]
        if len(lines) == 1:  # one mistake, one line; several are listed a key a line
            raise ConfigError(f"{path}: invalid {what}: {lines[0]}") from None
        raise ConfigError(f"{path}: invalid {what}:\n  " + "\n  ".join(lines)) from None


@contextlib.contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """A ConfigError raised by what a config names (the user's factory or data entry point,
    a weights file, a data folder) names that config file too, as its own keys' errors do."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def load_search_space(path: str | Path) -> SearchSpace:
    from hwnas.knobs import load_plugins  # a plug-in knob's section must be known first

    load_plugins()
    return load_record(path, SearchSpace, "search space")


def load_device_profile(path: str | Path) -> DeviceProfile:
    return load_record(path, DeviceProfile, "device profile")
