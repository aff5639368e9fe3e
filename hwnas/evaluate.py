"""Accuracy of the exact exported bytes, with onnxruntime on the controller."""

from __future__ import annotations

import numpy as np

from hwnas.export.onnx import INPUT_NAME
from hwnas.records import Artifact

EVAL_BATCH = 500


def onnx_accuracy(artifact: Artifact, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(artifact.read_bytes(), providers=["CPUExecutionProvider"])
    correct = 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = session.run(None, {INPUT_NAME: x[start:start + EVAL_BATCH]})[0]
        correct += int((logits.argmax(1) == y[start:start + EVAL_BATCH]).sum())
    return correct / len(x)
