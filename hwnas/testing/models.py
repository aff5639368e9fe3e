"""ONNX models of a chosen size, generated (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_onnx(path: Path, megabytes: float, seed: int = 0,
                external_data: str | None = None) -> Path:
    """One dense layer whose float32 weight makes the file about ``megabytes`` large; with
    ``external_data``, the weight is saved in that file beside the model instead."""
    side = int((megabytes * 1e6 / 4) ** 0.5)
    weight = np.random.default_rng(seed).standard_normal((side, side)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by the onnxruntime of older devices too
    if external_data is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external_data, size_threshold=0)
    return path
