"""Fashion-MNIST from idx files (Debian `dataset-fashion-mnist`, a folder, or torchvision)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gzip
import struct
from pathlib import Path

import numpy as np

from hwnas.config.models import DatasetSpec
from hwnas.data.preprocess import Preprocess

if TYPE_CHECKING:
    from hwnas.data import TaskData
from hwnas.errors import ConfigError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (optionally gzipped): magic 0 0 TYPE NDIM, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ConfigError(f"{path}: not an idx file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = data[4 + 4 * ndim:]
    if len(payload) != expected:
        raise ConfigError(f"{path}: idx header says {dims} ({expected} bytes) but "
                          f"{len(payload)} bytes follow; the file is truncated or corrupt")
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def idx_files(folder: Path, keys: tuple[str, ...] = tuple(FILES),
              name_another: str = "set dataset.path to a folder holding them") -> dict[str, Path]:
    """The idx files ``keys`` of ``folder``; missing ones are a ConfigError that says where
    they come from (``name_another``: how the caller is pointed at another folder)."""
    found = {key: _find(Path(folder), FILES[key]) for key in keys}
    missing = [FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise ConfigError(f"Fashion-MNIST not found: {folder} has no {', '.join(missing)} "
                          f"(optionally .gz); install the Debian package dataset-fashion-mnist "
                          f"(it fills {DEBIAN_DIR}), or {name_another}")
    return found  # type: ignore[return-value]


def _from_torchvision(root: Path) -> Path:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:
        raise ConfigError(f"dataset.download: torchvision could not download Fashion-MNIST "
                          f"({exc}); install the Debian package dataset-fashion-mnist or set "
                          f"dataset.path") from None
    return root / "FashionMNIST" / "raw"


def load_fashion_mnist(spec: DatasetSpec) -> "TaskData":
    from hwnas.data import TaskData, array_split, split_train_validation

    folders = [spec.path] if spec.path is not None else [DEBIAN_DIR]
    found = None
    for folder in folders:
        paths = {key: _find(Path(folder), stem) for key, stem in FILES.items()}
        if all(paths.values()):
            found = paths
            break
    if found is None and spec.download:
        folder = _from_torchvision(Path.home() / ".cache" / "hwnas" / "datasets")
        found = {key: _find(folder, stem) for key, stem in FILES.items()}
    if found is None or not all(found.values()):
        raise ConfigError(f"dataset: Fashion-MNIST idx files not found in {folders[0]}; install "
                          f"the Debian package dataset-fashion-mnist, set dataset.path to a folder "
                          f"holding {', '.join(FILES.values())} (optionally .gz), or set "
                          f"dataset.download: true where a network exists")

    def images(key: str) -> np.ndarray:
        return read_idx(found[key])[:, None, :, :]  # raw uint8: preprocessed by array_split

    train_x, train_y = images("train_images"), read_idx(found["train_labels"]).astype(np.int64)
    if spec.train_limit is not None:
        train_x, train_y = train_x[:spec.train_limit], train_y[:spec.train_limit]
    train_x, train_y, val_x, val_y = split_train_validation(train_x, train_y,
                                                            spec.validation_fraction)
    preprocess = Preprocess.from_spec(spec.preprocessing, 1, (MEAN,), (STD,))
    return TaskData.from_splits(
        name="fashion-mnist", train=array_split(train_x, train_y, preprocess),
        validation=array_split(val_x, val_y, preprocess),
        test=array_split(images("test_images"), read_idx(found["test_labels"]).astype(np.int64),
                         preprocess),
        num_classes=10, preprocessing=preprocess.describe(),
    )
