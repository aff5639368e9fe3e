"""Accuracy of the exact exported bytes, with onnxruntime on the controller."""

from __future__ import annotations

import numpy as np

from hwnas.data import ArraySplit, Split
from hwnas.export.onnx import INPUT_NAME
from hwnas.records import Artifact

EVAL_BATCH = 500


def onnx_split_accuracy(artifact: Artifact, split: Split) -> float:
    """Accuracy over a split, read batch by batch (an image folder is never held whole)."""
    import onnxruntime as ort

    session = ort.InferenceSession(artifact.read_bytes(), providers=["CPUExecutionProvider"])
    correct = 0
    for images, labels in split.batches(EVAL_BATCH):
        logits = session.run(None, {INPUT_NAME: images})[0]
        correct += int((logits.argmax(1) == labels).sum())
    return correct / max(1, len(split))


def onnx_accuracy(artifact: Artifact, x: np.ndarray, y: np.ndarray) -> float:
    return onnx_split_accuracy(artifact, ArraySplit(x, y))
