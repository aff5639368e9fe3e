"""ONNX Runtime with any execution-provider list from the request."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from hwnas_agent.runtimes import RuntimeUnavailable

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _optimization_level(ort: Any, name: str) -> Any:
    levels = ort.GraphOptimizationLevel
    return {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[name]


def make_feeds_for_shapes(specs: Dict[str, Any], seed: int) -> Dict[str, np.ndarray]:
    """name -> (shape, numpy dtype): deterministic random floats, zero integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in specs.items():
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def make_inputs(session_inputs: List[Any], batch_size: int, seed: int) -> Dict[str, np.ndarray]:
    """Deterministic random inputs; the first dynamic dimension is the batch."""
    specs = {}
    for meta in session_inputs:
        dtype = _NUMPY_TYPES.get(meta.type)
        if dtype is None:
            raise RuntimeUnavailable("input %r has type %s, which the agent cannot feed" % (
                meta.name, meta.type))
        shape = []
        for position, dim in enumerate(meta.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif position == 0:
                shape.append(batch_size)
            else:
                raise RuntimeUnavailable(
                    "input %r has a dynamic dimension %r at position %d; export the model with "
                    "static shapes except the batch" % (meta.name, dim, position))
        specs[meta.name] = (shape, dtype)
    return make_feeds_for_shapes(specs, seed)


class OnnxRuntimeModel:
    def __init__(self, session: Any, feeds: Dict[str, np.ndarray], request: Any, version: str):
        self._session = session
        self._feeds = feeds
        self._request = request
        self._version = version
        self.inputs = [
            {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
            for name, array in feeds.items()
        ]

    def run_once(self) -> None:
        self._session.run(None, self._feeds)

    def describe(self) -> Dict[str, Any]:
        return {
            "name": "onnxruntime",
            "version": self._version,
            "requested_execution_providers": list(self._request.execution_providers),
            "execution_providers": self._session.get_providers(),
            "provider_options": list(self._request.provider_options),
            "disable_cpu_fallback": self._request.disable_cpu_fallback,
            "intra_op_threads": self._request.intra_op_threads,
            "inter_op_threads": self._request.inter_op_threads,
            "graph_optimization": self._request.graph_optimization,
        }


def load(model_path: str, request: Any) -> OnnxRuntimeModel:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in request.execution_providers if p not in available]
    if missing:
        raise RuntimeUnavailable(
            "execution provider(s) %s not available on this device; available: %s"
            % (", ".join(missing), ", ".join(available)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = request.intra_op_threads
    options.inter_op_num_threads = request.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _optimization_level(ort, request.graph_optimization)
    if request.disable_cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider_options = list(request.provider_options)
    provider_options += [{}] * (len(request.execution_providers) - len(provider_options))
    session = ort.InferenceSession(
        model_path,
        sess_options=options,
        providers=list(request.execution_providers),
        provider_options=[{k: str(v) for k, v in o.items()} for o in provider_options],
    )
    feeds = make_inputs(session.get_inputs(), request.batch_size, request.seed)
    return OnnxRuntimeModel(session, feeds, request, ort.__version__)


def inspect(model_path: str) -> Dict[str, Any]:
    """Load on the CPU to prove the bytes are a usable model; report its signature."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return {
        "inputs": [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape],
                    "type": i.type} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape],
                     "type": o.type} for o in session.get_outputs()],
    }
