import gzip
import struct

import numpy as np
import pytest

from hwnas.config.models import DatasetSpec
from hwnas.data import load_task
from hwnas.data.fashion_mnist import DEBIAN_DIR, read_idx
from hwnas.errors import ConfigError


def test_fashion_mnist_from_the_debian_idx_files():
    assert DEBIAN_DIR.exists(), "scripts/setup.sh installs dataset-fashion-mnist"
    task = load_task(DatasetSpec(builtin="fashion-mnist", validation_fraction=0.1))
    assert task.train_x.shape == (54000, 1, 28, 28) and task.val_x.shape == (6000, 1, 28, 28)
    assert task.test_x.shape == (10000, 1, 28, 28)
    assert set(np.unique(task.test_y)) == set(range(10))
    assert abs(float(task.train_x.mean())) < 0.05  # normalised with the data set's mean/std
    assert task.train_x.dtype == np.float32


def test_idx_reader_round_trip_and_corruption(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\0\0\x08\x03" + struct.pack(">III", 2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(header + images.tobytes())
    assert np.array_equal(read_idx(path), images)
    truncated = tmp_path / "t-idx3-ubyte"
    truncated.write_bytes(header + images.tobytes()[:-5])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        read_idx(truncated)
    bad = tmp_path / "b-idx3-ubyte"
    bad.write_bytes(b"PK\x03\x04" + images.tobytes())
    with pytest.raises(ConfigError, match="not an idx file"):
        read_idx(bad)


def test_fashion_mnist_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="dataset-fashion-mnist"):
        load_task(DatasetSpec(builtin="fashion-mnist", path=tmp_path))


def test_digits_splits_are_disjoint_and_deterministic():
    spec = DatasetSpec(builtin="digits", validation_fraction=0.2)
    first, second = load_task(spec), load_task(spec)
    assert first.fingerprint == second.fingerprint
    total = len(first.train_x) + len(first.val_x) + len(first.test_x)
    assert total == 1797 and first.input_shape == (1, 8, 8)
    assert len(first.val_x) == round((1797 - len(first.test_x)) * 0.2)
