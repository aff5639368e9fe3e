"""Task data: built-in Fashion-MNIST (idx files) and scikit-learn digits, or a user entry point.

Arrays are NCHW float32, already normalised; the same preprocessing must be applied in
deployment, so it travels with the data (``preprocessing``) into the model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cached_property
from typing import Any

import numpy as np

from hwnas.config.models import DatasetSpec
from hwnas.entry_points import load_entry_point
from hwnas.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    preprocessing: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.train_x, self.train_y, self.val_x, self.val_y):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def calibration(self, count: int, seed: int = 0) -> np.ndarray:
        """Real training images for quantization calibration."""
        return self.calibration_labels(count, seed)[0]

    def calibration_labels(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Real labelled training samples (saliency needs the labels)."""
        order = np.random.default_rng(seed).permutation(len(self.train_x))[:count]
        return self.train_x[order], self.train_y[order]


def split_train_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * fraction)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_task(spec: DatasetSpec) -> TaskData:
    if spec.entry_point is not None:
        task = load_entry_point(spec.entry_point, "dataset.entry_point")(spec)
        if not isinstance(task, TaskData):
            raise ConfigError(f"dataset.entry_point {spec.entry_point} returned "
                              f"{type(task).__name__}; it must return hwnas.data.TaskData")
        return task
    if spec.builtin == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(spec)
    from hwnas.data.digits import load_digits_task

    return load_digits_task(spec)
