"""A labelled split (train, validation or test) that yields preprocessed batches on demand.

Fine-tuning, calibration, saliency and evaluation read data only through ``Split``: arrays in
memory and image folders on disk look alike, and an image folder is decoded batch by batch,
never held whole in memory.
"""

from __future__ import annotations

import abc
import concurrent.futures
import hashlib
from typing import Callable, Iterator

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]  # (NCHW float32 images, int64 labels)


class Split(abc.ABC):
    """``labels`` are all in memory (small); images are made on demand by ``load``."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def load(self, indices: np.ndarray) -> np.ndarray:
        """The preprocessed images (NCHW float32) of these samples, in this order."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash of the samples and their preprocessing (a base model's cache key)."""

    @abc.abstractmethod
    def subset(self, indices: np.ndarray) -> "Split":
        """The samples at ``indices``, same preprocessing."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.load(np.arange(1)).shape[1:])

    def batch(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        return self.load(indices), self.labels[indices]

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> Iterator[Batch]:
        """Batches in ``order`` (default: as stored); the next batch is prepared in a
        background thread while the caller works on this one."""
        order = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        if not chunks:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as prefetch:
            pending = prefetch.submit(self.batch, chunks[0])
            for chunk in chunks[1:]:
                ready = pending.result()
                pending = prefetch.submit(self.batch, chunk)
                yield ready
            yield pending.result()

    def sample(self, count: int, seed: int = 0) -> Batch:
        """``count`` samples drawn at random without replacement (all if fewer)."""
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        return self.batch(order)


class ArraySplit(Split):
    """Images in memory, optionally transformed per batch (e.g. resized: a 3x64x64 copy of
    Fashion-MNIST would take 3 GB; its 28x28 bytes take 47 MB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 transform_key: str = "") -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.transform_key = transform_key  # what the transform does, for the fingerprint

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The preprocessed arrays themselves, where they are held as such."""
        return (self.images, self.labels) if self.transform is None else None

    def load(self, indices: np.ndarray) -> np.ndarray:
        images = self.images[np.asarray(indices, dtype=np.int64)]
        if self.transform is None:
            return np.ascontiguousarray(images, dtype=np.float32)
        return self.transform(images)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.transform_key.encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray) -> "ArraySplit":
        indices = np.asarray(indices, dtype=np.int64)
        return ArraySplit(self.images[indices], self.labels[indices], self.transform,
                          self.transform_key)
