"""Native TensorRT: an engine built from the ONNX bytes, cached by model sha256 + options,
build time reported apart from latency.

The bytes carry the precision plan (Q/DQ pairs for int8, float16 islands behind Casts), so
the network is built strongly typed where TensorRT can: every layer runs in the type the
ONNX gives it, and nothing else. TensorRT 11 is always strongly typed and has no precision
builder flags left (BuilderFlag.FP16/INT8 and the calibrators are gone); TensorRT 10
(JetPack 6) has both modes: strongly typed unless the profile asks for builder flags, which
bring back weak typing (TensorRT may then pick fp16/int8 kernels for any layer it likes,
and the report says so). TensorRT 8 (JetPack 5) knows only weak typing.

Imported only when a request names runtime "tensorrt"; needs the tensorrt package of the
device (JetPack, or pip install tensorrt) and the CUDA runtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from hwnas_agent.protocol import TENSORRT
from hwnas_agent.runtimes.base import LoadedModel, Runtime, RuntimeUnavailable
from hwnas_agent.runtimes.feeds import make_feeds_for_shapes

FLAGS = ("fp16", "int8")


class BuildSettings:
    """What to ask of the builder: network creation flags, builder flags, and the typing
    that results ('strong': the ONNX's types are law; 'weak': TensorRT chooses per layer)."""

    def __init__(self, creation_flags: int, builder_flags: List[Any], typing: str) -> None:
        self.creation_flags = creation_flags
        self.builder_flags = builder_flags
        self.typing = typing


def build_settings(trt: Any, requested_flags: List[str]) -> BuildSettings:
    """Strong typing where the installed TensorRT allows it with the requested flags.

    Reads the version's enums, not its version number: TensorRT 11 has no BuilderFlag.FP16
    or INT8 (its STRONGLY_TYPED creation flag is kept but ignored), TensorRT 10 has both and
    refuses precision flags on a strongly typed network, TensorRT 8 has no STRONGLY_TYPED and
    needs EXPLICIT_BATCH."""
    creation = trt.NetworkDefinitionCreationFlag
    builder = trt.BuilderFlag
    has_precision_flags = all(hasattr(builder, f.upper()) for f in FLAGS)
    if requested_flags and not has_precision_flags:
        raise RuntimeUnavailable(
            "TensorRT %s has no precision builder flags (tensorrt_flags %s): it builds strongly "
            "typed networks only, in the precisions the ONNX carries; remove runtime."
            "tensorrt_flags from the device profile" % (trt.__version__, sorted(requested_flags)))
    explicit_batch = (1 << int(creation.EXPLICIT_BATCH)) if (
        hasattr(creation, "EXPLICIT_BATCH") and not hasattr(creation, "STRONGLY_TYPED")) else 0
    if not requested_flags and hasattr(creation, "STRONGLY_TYPED"):
        return BuildSettings(1 << int(creation.STRONGLY_TYPED), [], "strong")
    if not has_precision_flags:  # neither flags nor STRONGLY_TYPED: only TensorRT 11+ is typed
        return BuildSettings(0, [], "strong")
    flags = [getattr(builder, f.upper()) for f in sorted(requested_flags)]
    return BuildSettings(explicit_batch, flags, "weak")


def engine_key(sha256: str, request: Any, trt_version: str, device: str) -> str:
    options = {"sha256": sha256, "flags": sorted(request.tensorrt_flags), "batch": request.batch_size,
               "trt": trt_version, "device": device}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:32]


class TensorRTModel(LoadedModel):
    name = TENSORRT

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
        self._describe = {"name": self.name, "version": trt.__version__,
                          "flags": sorted(request.tensorrt_flags),
                          "typing": build_settings(trt, request.tensorrt_flags).typing,
                          "emulated": False, "emulation": None, "engine_cached": cached,
                          "engine_build_seconds": build_seconds,
                          "execution_providers": ["TensorRT"]}

    def run_once(self) -> None:
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        self._cuda.synchronize(self._stream)

    def node_assignment(self) -> Optional[Dict[str, Any]]:
        """The whole network is one engine on the GPU (a layer TensorRT cannot build fails
        the build): no node runs elsewhere."""
        return None

    def describe(self) -> Dict[str, Any]:
        return dict(self._describe)


class TensorRT(Runtime):
    name = TENSORRT

    def available(self) -> Optional[str]:
        if importlib.util.find_spec("tensorrt") is None:
            return ("runtime 'tensorrt' needs the tensorrt Python package (JetPack ships it; "
                    "elsewhere pip install tensorrt)")
        return None

    def open(self, model_path: str, request: Any, cache_dir: Optional[str] = None
             ) -> TensorRTModel:
        why = self.available()
        if why is not None:
            raise RuntimeUnavailable(why)
        return _open(model_path, request, cache_dir)


RUNTIME = TensorRT()


def _open(model_path: str, request: Any, cache_dir: Optional[str]) -> TensorRTModel:
    import tensorrt as trt  # type: ignore[import-not-found]

    from hwnas_agent.runtimes._cudart import CudaRuntime

    cuda = CudaRuntime()
    logger = trt.Logger(trt.Logger.WARNING)
    with open(model_path, "rb") as handle:
        onnx_bytes = handle.read()
    # the model's address covers all its files (a manifest's hash for a multi-file model)
    sha256 = request.model_sha256 or hashlib.sha256(onnx_bytes).hexdigest()
    if cache_dir is None:  # nowhere lasting: built for this process only
        cache_dir = tempfile.mkdtemp(prefix="hwnas-engines-")
    os.makedirs(cache_dir, exist_ok=True)
    cache = os.path.join(cache_dir, engine_key(sha256, request, trt.__version__, "gpu0") + ".engine")
    build_seconds, cached = 0.0, os.path.exists(cache)
    if cached:
        with open(cache, "rb") as handle:
            serialized = handle.read()
    else:
        started = time.perf_counter()
        serialized = _build(trt, logger, onnx_bytes, model_path, request)
        build_seconds = time.perf_counter() - started
        tmp = cache + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(serialized)
        os.replace(tmp, cache)
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeUnavailable("TensorRT could not deserialize the engine")
    return TensorRTModel(trt, engine, request, build_seconds, cached, cuda)


def _build(trt: Any, logger: Any, onnx_bytes: bytes, model_path: str, request: Any) -> bytes:
    settings = build_settings(trt, request.tensorrt_flags)
    builder = trt.Builder(logger)
    network = builder.create_network(settings.creation_flags)
    parser = trt.OnnxParser(network, logger)
    # the path lets the parser find external data beside the model (a multi-file model)
    if not parser.parse(onnx_bytes, model_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeUnavailable("TensorRT cannot parse the model: " + errors)
    config = builder.create_builder_config()
    for flag in settings.builder_flags:
        config.set_flag(flag)
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
