"""Native TensorRT: an engine built from the (QDQ) ONNX with the requested precision flags,
cached by model sha256 + options, build time reported apart from latency.

Imported only when a request names runtime "tensorrt"; needs the tensorrt package of the
device (JetPack, or pip install tensorrt) and the CUDA runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, List

import numpy as np

from hwnas_agent.runtimes import RuntimeUnavailable
from hwnas_agent.runtimes.onnxruntime import make_feeds_for_shapes

FLAGS = ("fp16", "int8")


def engine_key(sha256: str, request: Any, trt_version: str, device: str) -> str:
    options = {"sha256": sha256, "flags": sorted(request.tensorrt_flags), "batch": request.batch_size,
               "trt": trt_version, "device": device}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:32]


class TensorRTModel:
    def __init__(self, trt: Any, engine: Any, request: Any, build_seconds: float, cached: bool,
                 cuda: Any) -> None:
        self._cuda = cuda
        self._context = engine.create_execution_context()
        self._stream = cuda.stream()
        self._buffers: List[int] = []
        shapes, dtypes, inputs = {}, {}, []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = [request.batch_size if d < 0 else d for d in engine.get_tensor_shape(name)]
                self._context.set_input_shape(name, shape)
                shapes[name] = shape
                inputs.append(name)
        feeds = make_feeds_for_shapes({n: (shapes[n], dtypes[n]) for n in inputs}, request.seed)
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = list(self._context.get_tensor_shape(name))
            size = int(np.prod(shape)) * dtypes[name].itemsize
            pointer = cuda.malloc(max(size, 1))
            self._buffers.append(pointer)
            self._context.set_tensor_address(name, pointer)
            if name in feeds:
                cuda.copy_to_device(pointer, np.ascontiguousarray(feeds[name]))
        self.inputs = [{"name": n, "shape": shapes[n], "dtype": str(dtypes[n])} for n in inputs]
        self._describe = {"name": "tensorrt", "version": trt.__version__,
                          "flags": sorted(request.tensorrt_flags), "engine_cached": cached,
                          "engine_build_seconds": build_seconds,
                          "execution_providers": ["TensorRT"]}

    def run_once(self) -> None:
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        self._cuda.synchronize(self._stream)

    def describe(self) -> Dict[str, Any]:
        return dict(self._describe)


def load(model_path: str, request: Any) -> TensorRTModel:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeUnavailable("runtime 'tensorrt' needs the tensorrt Python package "
                                 "(JetPack ships it; elsewhere pip install tensorrt)")
    from hwnas_agent.runtimes._cudart import CudaRuntime

    cuda = CudaRuntime()
    logger = trt.Logger(trt.Logger.WARNING)
    with open(model_path, "rb") as handle:
        onnx_bytes = handle.read()
    sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    cache_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_path))), "engines")
    os.makedirs(cache_dir, exist_ok=True)
    cache = os.path.join(cache_dir, engine_key(sha256, request, trt.__version__, "gpu0") + ".engine")
    build_seconds, cached = 0.0, os.path.exists(cache)
    if cached:
        with open(cache, "rb") as handle:
            serialized = handle.read()
    else:
        started = time.perf_counter()
        serialized = _build(trt, logger, onnx_bytes, request)
        build_seconds = time.perf_counter() - started
        tmp = cache + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(serialized)
        os.replace(tmp, cache)
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeUnavailable("TensorRT could not deserialize the engine")
    return TensorRTModel(trt, engine, request, build_seconds, cached, cuda)


def _build(trt: Any, logger: Any, onnx_bytes: bytes, request: Any) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeUnavailable("TensorRT cannot parse the model: " + errors)
    config = builder.create_builder_config()
    for flag in request.tensorrt_flags:
        config.set_flag({"fp16": trt.BuilderFlag.FP16, "int8": trt.BuilderFlag.INT8}[flag])
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = [request.batch_size if d < 0 else d for d in tensor.shape]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeUnavailable("TensorRT failed to build an engine (see the agent's log)")
    return bytes(serialized)
