"""Runtimes: one small contract, one module each, imported only when asked for.

A runtime module exposes ``load(model_path, request) -> LoadedModel`` where a LoadedModel
has ``run_once()`` (one inference on inputs prepared at load time), ``describe()`` (runtime,
version, providers actually in use, options, threads) and ``inputs`` (name/shape/dtype).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {"onnxruntime": "hwnas_agent.runtimes.onnxruntime",
            "tensorrt": "hwnas_agent.runtimes.tensorrt"}


class RuntimeUnavailable(Exception):
    """The requested runtime or execution provider does not exist on this device."""


def load(model_path: str, request: Any) -> Any:
    module_name = _MODULES.get(request.runtime)
    if module_name is None:
        raise RuntimeUnavailable(
            "runtime %r is not supported; available: %s" % (request.runtime, ", ".join(_MODULES))
        )
    module = importlib.import_module(module_name)
    return module.load(model_path, request)
