"""ONNX graph facts shared by export and `hwnas profile` (onnx only: no torch at import)."""

from __future__ import annotations

import onnx

INPUT_NAME, OUTPUT_NAME = "input", "logits"
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers (older exporters list
    every weight among the inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]
