"""User code named in a config as 'package.module:function', and the plug-ins installed
packages declare in an entry point group (installed_plugins).

User code fails in user ways (a typo, a missing package, an exception in the function): each
becomes one ConfigError naming the key, the entry point and the user's own failing line, never
a traceback through hwnas.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from hwnas.errors import ConfigError, HwnasError


def _where(exc: BaseException) -> str:
    """The innermost frame of the user's traceback: 'file.py:12 in build'."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _import(module_name: str) -> Any:
    """Import as Python does; a module not found there is looked for in the current folder
    too (what `python -m` would find: a user's mymodels.py beside their YAML), added last so
    that it never shadows an installed package."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        top = module_name.split(".")[0]
        if exc.name != top or here in sys.path or not (
                Path(here, f"{top}.py").is_file() or Path(here, top, "__init__.py").is_file()):
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def load_entry_point(spec: str, key: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise ConfigError(f"{key}: no module named {exc.name!r} (from {spec}) in the "
                              f"installed packages, PYTHONPATH or the current folder "
                              f"({os.getcwd()})") from None
        raise ConfigError(f"{key}: importing {module_name} failed: it needs the module "
                          f"{exc.name!r}, which is not installed ({_where(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module, any failure at import time
        raise ConfigError(f"{key}: importing {module_name} failed with "
                          f"{type(exc).__name__}: {exc} ({_where(exc)}); fix the module, then "
                          f"run again") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{key}: {module_name} has no callable {attribute!r}")
    return function


def call_entry_point(spec: str, key: str, *args: Any, **kwargs: Any) -> Any:
    """Load and call; an exception raised by the user's function becomes a ConfigError."""
    function = load_entry_point(spec, key)
    try:
        return function(*args, **kwargs)
    except HwnasError:
        raise  # hwnas code the user called already says what is wrong
    except Exception as exc:  # noqa: BLE001 - the user's code, any failure
        raise ConfigError(f"{key}: {spec} raised {type(exc).__name__}: {exc} "
                          f"({_where(exc)}); fix it, then run again") from None


def installed_plugins(group: str, what: str) -> Iterator[tuple[str, Any]]:
    """Each entry point installed packages declare in ``group``, loaded: (how to name it in
    an error, e.g. "knob plug-in x (pkg.mod:X)", the object). One that cannot be imported is
    one ConfigError naming it (``what``: "knob", "metric")."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=group):
        where = f"{what} plug-in {entry.name} ({entry.value})"
        try:
            found = entry.load()
        except Exception as exc:  # noqa: BLE001 - the plug-in's own import, any failure
            raise ConfigError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from None
        yield where, found
