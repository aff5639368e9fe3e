"""Task data: built-in Fashion-MNIST (idx files) and scikit-learn digits, image folders, or a
user entry point.

Every split is a ``Split`` that yields NCHW float32 batches, already preprocessed; the same
preprocessing must be applied in deployment, so it travels with the data (``preprocessing``)
into the model card. A user entry point may still return arrays:
``TaskData(name, train_x, train_y, val_x, val_y, test_x, test_y, num_classes, preprocessing)``.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

import numpy as np

from hwnas.config.models import DatasetSpec
from hwnas.data.preprocess import Preprocess
from hwnas.data.splits import ArraySplit, Batch, Split
from hwnas.entry_points import call_entry_point
from hwnas.errors import ConfigError, HwnasError

__all__ = ["ArraySplit", "Batch", "Preprocess", "Split", "TaskData", "array_split", "held_out",
           "load_task", "split_train_validation"]


class TaskData:
    """Train, validation and test splits of one classification task (frozen)."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    preprocessing: dict[str, Any]

    def __init__(self, name: str, train_x: np.ndarray | None = None,
                 train_y: np.ndarray | None = None, val_x: np.ndarray | None = None,
                 val_y: np.ndarray | None = None, test_x: np.ndarray | None = None,
                 test_y: np.ndarray | None = None, num_classes: int = 0,
                 preprocessing: dict[str, Any] | None = None, *, train: Split | None = None,
                 validation: Split | None = None, test: Split | None = None) -> None:
        arrays = (train_x, train_y, val_x, val_y, test_x, test_y)
        if train is None:
            if any(a is None for a in arrays):
                raise TypeError("TaskData needs train_x, train_y, val_x, val_y, test_x, test_y "
                                "(NCHW float32 images, int labels) or train/validation/test splits")
            train, validation, test = (ArraySplit(train_x, train_y), ArraySplit(val_x, val_y),
                                       ArraySplit(test_x, test_y))
        if validation is None or test is None:
            raise TypeError("TaskData needs train, validation and test splits")
        for key, value in (("name", name), ("train", train), ("validation", validation),
                           ("test", test), ("num_classes", int(num_classes)),
                           ("preprocessing", dict(preprocessing or {}))):
            object.__setattr__(self, key, value)

    @classmethod
    def from_splits(cls, name: str, train: Split, validation: Split, test: Split,
                    num_classes: int, preprocessing: dict[str, Any]) -> "TaskData":
        return cls(name, num_classes=num_classes, preprocessing=preprocessing, train=train,
                   validation=validation, test=test)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"TaskData is frozen; cannot set {key}")

    def _arrays(self, split: Split, which: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = split.arrays if isinstance(split, ArraySplit) else None
        if arrays is None:
            raise HwnasError(f"the {which} split of {self.name} is streamed from disk or "
                             f"preprocessed per batch; read it with task.{which}.batches()")
        return arrays

    # arrays, for data held in memory as such (read everything else through the splits)
    train_x = property(lambda self: self._arrays(self.train, "train")[0])
    train_y = property(lambda self: self.train.labels)
    val_x = property(lambda self: self._arrays(self.validation, "validation")[0])
    val_y = property(lambda self: self.validation.labels)
    test_x = property(lambda self: self._arrays(self.test, "test")[0])
    test_y = property(lambda self: self.test.labels)

    @cached_property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split in (self.train, self.validation):
            digest.update(split.fingerprint().encode())
        return digest.hexdigest()

    def calibration(self, count: int, seed: int = 0) -> np.ndarray:
        """Real training images for quantization calibration."""
        return self.calibration_labels(count, seed)[0]

    def calibration_labels(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Real labelled training samples (saliency needs the labels)."""
        return self.train.sample(count, seed)


def split_train_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * fraction)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def held_out(split: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """(rest, held out): a random ``fraction`` of ``split`` held out, the same every time."""
    order = np.random.default_rng(seed).permutation(len(split))
    count = max(1, int(round(len(split) * fraction)))
    return split.subset(np.sort(order[count:])), split.subset(np.sort(order[:count]))


def array_split(images: np.ndarray, labels: np.ndarray, preprocess: Preprocess) -> ArraySplit:
    """Raw images in memory: preprocessed once here when that keeps their size, else per batch
    (a resized copy could be many times larger than the raw bytes)."""
    if preprocess.changes_size or preprocess.channels != images.shape[1]:
        return ArraySplit(images, labels, preprocess, preprocess.key())
    return ArraySplit(preprocess(images), labels)


def load_task(spec: DatasetSpec) -> TaskData:
    task = _load(spec)
    if spec.test_limit is not None and spec.test_limit < len(task.test):
        return TaskData.from_splits(task.name, task.train, task.validation,
                                    task.test.subset(np.arange(spec.test_limit)),
                                    task.num_classes, task.preprocessing)
    return task


def _load(spec: DatasetSpec) -> TaskData:
    if spec.entry_point is not None:
        task = call_entry_point(spec.entry_point, "dataset.entry_point", spec)
        if not isinstance(task, TaskData):
            raise ConfigError(f"dataset.entry_point {spec.entry_point} returned "
                              f"{type(task).__name__}; it must return hwnas.data.TaskData")
        return task
    if spec.image_folder is not None:
        from hwnas.data.image_folder import load_image_folder

        return load_image_folder(spec)
    if spec.builtin == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(spec)
    from hwnas.data.digits import load_digits_task

    return load_digits_task(spec)
