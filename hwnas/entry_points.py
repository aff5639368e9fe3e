"""User code named in a config as 'package.module:function'."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from hwnas.errors import ConfigError


def load_entry_point(spec: str, key: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({exc}); is the package "
                          f"installed or on PYTHONPATH?") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{key}: {module_name} has no callable {attribute!r}")
    return function
