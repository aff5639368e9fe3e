"""Which builder settings native TensorRT gets, per TensorRT generation.

No GPU and no TensorRT library here: `pip download tensorrt` (11.4.0.106) resolves to
tensorrt_cu13_bindings (a wheel) and tensorrt_cu13_libs (an sdist that fetches the libraries
from pypi.nvidia.com); the bindings alone fail to import (libnvonnxparser.so.11 missing). The
decision reads only the enums, so it is tested against their member lists, taken from each
version's Python API reference (TensorRT 8.6, 10.3 as in JetPack 6.1/6.2, and 11.4).
"""

import types

import pytest
from hwnas_agent.runtimes import RuntimeUnavailable
from hwnas_agent.runtimes.tensorrt import build_settings


def enums(version, creation, builder):
    return types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(**{n: i for i, n in enumerate(creation)}),
        BuilderFlag=types.SimpleNamespace(**{n: f"BuilderFlag.{n}" for n in builder}))


TRT8 = enums("8.6.2", ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"],
             ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "TF32",
              "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "FP8"])
TRT10 = enums("10.3.0", ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
              ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "BF16", "FP8", "INT4",
               "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
               "STRIP_PLAN", "WEIGHT_STREAMING"])
TRT11 = enums("11.4.0", ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
              ["DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "STRIP_PLAN", "WEIGHT_STREAMING",
               "REFIT_IDENTICAL", "REFIT_INDIVIDUAL"])


def test_tensorrt_10_builds_strongly_typed_when_no_flags_are_asked():
    settings = build_settings(TRT10, [])
    assert settings.typing == "strong" and settings.builder_flags == []
    assert settings.creation_flags == 1 << TRT10.NetworkDefinitionCreationFlag.STRONGLY_TYPED


def test_tensorrt_10_with_precision_flags_is_weakly_typed_and_says_so():
    settings = build_settings(TRT10, ["int8", "fp16"])
    assert settings.typing == "weak" and settings.creation_flags == 0  # explicit batch is implied
    assert settings.builder_flags == ["BuilderFlag.FP16", "BuilderFlag.INT8"]


def test_tensorrt_11_is_always_strongly_typed_and_refuses_precision_flags():
    assert build_settings(TRT11, []).typing == "strong"
    with pytest.raises(RuntimeUnavailable, match="no precision builder flags"):
        build_settings(TRT11, ["fp16"])


def test_tensorrt_8_needs_explicit_batch_and_builder_flags():
    settings = build_settings(TRT8, ["fp16", "int8"])
    assert settings.creation_flags == 1 << TRT8.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert settings.typing == "weak"
