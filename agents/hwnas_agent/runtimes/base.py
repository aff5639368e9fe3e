"""Runtimes: one small contract, one module each, imported only when asked for.

A runtime module (named in protocol.RUNTIMES, file ``runtimes/<name>.py``) exposes ``RUNTIME``,
a Runtime: ``available()`` says why it cannot run here (or None), ``open(model_path, request,
cache_dir)`` gives a LoadedModel. A LoadedModel runs one inference on inputs prepared at open
time (``run_once``), runs the timed loop of measure.py (``timed_loop``; a runtime with its own
loop may override it), says which node ran on which device (``node_assignment``), may time each node in profiled
runs after the timed rounds (``layer_profile``) and describes
itself (``describe``: name, version, devices in use, options, threads). ``inputs`` lists what
it feeds (name, shape, dtype). tests/agent/test_runtimes.py checks every runtime against this.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Dict, List, Optional

from hwnas_agent.measure import run_timed
from hwnas_agent.protocol import RUNTIMES


class RuntimeUnavailable(Exception):
    """The requested runtime or execution provider does not exist on this device."""


class LoadedModel(abc.ABC):
    """A model opened by a runtime, with its inputs ready."""

    name = ""  # the runtime's name, one of protocol.RUNTIMES
    inputs: List[Dict[str, Any]] = []  # [{"name", "shape", "dtype"}] of the fed inputs

    @abc.abstractmethod
    def run_once(self) -> None:
        """One inference on the prepared inputs, finished when this returns."""

    def timed_loop(self, request: Any, **hooks: Any) -> Dict[str, Any]:
        """Warm-up and timed rounds (measure.run_timed: its hooks pass through)."""
        return run_timed(self.run_once, request, **hooks)

    @abc.abstractmethod
    def node_assignment(self) -> Optional[Dict[str, Any]]:
        """{"counts": {device: nodes}, "elsewhere": [...], "elsewhere_total": n}, or None
        where the runtime cannot say."""

    def layer_profile(self, runs: int, headline_p50_ms: Optional[float]) -> Dict[str, Any]:
        """Per-node time over ``runs`` profiled inferences, run after the timed rounds
        (ort_layers.py has the format), or {"error": why} where this runtime cannot say."""
        return {"error": "runtime %r gives no per-layer times in this agent (TensorRT's layer "
                         "profiler is not wired in yet); measure with runtime onnxruntime to "
                         "see onnxruntime's per-node times" % self.name}

    @abc.abstractmethod
    def describe(self) -> Dict[str, Any]:
        """What ran the model: at least name, version, execution_providers, emulated."""


class Runtime(abc.ABC):
    name = ""

    @abc.abstractmethod
    def available(self) -> Optional[str]:
        """Why this runtime cannot run on this device (what to install), or None."""

    @abc.abstractmethod
    def open(self, model_path: str, request: Any, cache_dir: Optional[str] = None) -> LoadedModel:
        """The model at ``model_path`` ready to run as ``request`` asks; ``cache_dir`` is where
        the runtime may keep what it builds (TensorRT engines), None for nowhere lasting.
        RuntimeUnavailable when this device cannot run it so."""


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise RuntimeUnavailable("runtime %r is not supported; available: %s"
                                 % (name, ", ".join(RUNTIMES)))
    return importlib.import_module("hwnas_agent.runtimes." + name).RUNTIME


def load(model_path: str, request: Any, cache_dir: Optional[str] = None) -> LoadedModel:
    return runtime(request.runtime).open(model_path, request, cache_dir)
