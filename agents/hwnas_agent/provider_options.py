"""Which execution-provider options a measure request may carry (protocol.py checks every
request with this): settings, never places on the device or memory addresses.

Standard library only, like protocol.py: the controller validates profiles with it too.
"""

from __future__ import annotations

import re
from typing import Optional

# Provider options reach onnxruntime's execution providers as they are, and several of them
# name files or memory: QNN's profiling_file_path writes a file where the request says (with
# the model's node names inside), its backend_path / op_packages / qnn_saver_path load a
# library from any path, CUDA's gpu_external_alloc / user_compute_stream are raw addresses,
# TensorRT's *_path options read and write caches anywhere. The wire carries settings, never
# places or addresses: providers we know take only the options listed here, any other
# provider none whose name says file, path, library or address, and no value is a path.
# (A QNN backend is named by its library's bare name, resolved beside the installed plugin.)
PROVIDER_OPTIONS = {
    "QNNExecutionProvider": (
        "backend_type", "backend_path", "htp_performance_mode", "profiling_level",
        "htp_graph_finalization_optimization_mode", "soc_model", "htp_arch", "device_id",
        "enable_htp_fp16_precision", "vtcm_mb", "rpc_control_latency", "qnn_context_priority",
        "offload_graph_io_quantization", "enable_htp_spill_fill_buffer", "htp_bf16_enable"),
    "TensorrtExecutionProvider": (
        "device_id", "trt_fp16_enable", "trt_int8_enable", "trt_bf16_enable",
        "trt_engine_cache_enable", "trt_timing_cache_enable", "trt_max_workspace_size",
        "trt_builder_optimization_level", "trt_min_subgraph_size", "trt_max_partition_iterations",
        "trt_layer_norm_fp32_fallback", "trt_cuda_graph_enable", "trt_dla_enable", "trt_dla_core",
        "trt_sparsity_enable", "trt_auxiliary_streams", "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable", "trt_detailed_build_log",
        "trt_build_heuristics_enable", "trt_force_timing_cache"),
    "CUDAExecutionProvider": (
        "device_id", "cudnn_conv_algo_search", "arena_extend_strategy", "gpu_mem_limit",
        "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d",
        "enable_cuda_graph", "tunable_op_enable", "tunable_op_tuning_enable", "use_tf32",
        "prefer_nhwc", "enable_skip_layer_norm_strict_mode", "use_ep_level_unified_stream"),
}
QNN_BACKEND_LIBRARIES = ("libQnnHtp.so", "libQnnCpu.so", "libQnnGpu.so", "QnnHtp.dll",
                         "QnnCpu.dll", "QnnGpu.dll")
_PLACE_WORDS = re.compile(r"path|file|dir|folder|librar|package|alloc|stream|address|dump|saver",
                          re.IGNORECASE)


def provider_option_problem(provider: str, key: str, value: str) -> Optional[str]:
    """Why the wire may not carry this option of ``provider``, or None when it may."""
    known = PROVIDER_OPTIONS.get(provider)
    if known is not None and key not in known:
        return ("%s option '%s' is not one the agent passes on (it may name a file, a library "
                "or memory on the device); allowed: %s" % (provider, key, ", ".join(known)))
    if known is None and _PLACE_WORDS.search(key):
        return ("%s option '%s' names a place on the device (a file, library or address): "
                "options over the wire are settings only" % (provider, key))
    if key == "backend_path" and value not in QNN_BACKEND_LIBRARIES:
        return ("QNN backend_path '%s' must be one of %s, found beside the installed QNN "
                "libraries" % (value[:80], ", ".join(QNN_BACKEND_LIBRARIES)))
    if "/" in value or "\\" in value or "\x00" in value:
        return "%s option '%s': a value may not be a path" % (provider, key)
    return None
