"""ONNX models of a chosen size, generated (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_onnx(path: Path, megabytes: float, seed: int = 0) -> Path:
    """One dense layer whose float32 weight makes the file about ``megabytes`` large."""
    side = int((megabytes * 1e6 / 4) ** 0.5)
    weight = np.random.default_rng(seed).standard_normal((side, side)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by the onnxruntime of older devices too
    onnx.save(model, str(path))
    return path
