"""scikit-learn's 8x8 digits (ships with scikit-learn): small and fast, for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hwnas.config.models import DatasetSpec
from hwnas.data.preprocess import Preprocess

if TYPE_CHECKING:
    from hwnas.data import TaskData

TEST_FRACTION = 0.2
MEAN, STD = 0.5, 0.5
MAX_VALUE = 16  # digits pixels are 0..16


def load_digits_task(spec: DatasetSpec) -> "TaskData":
    from sklearn.datasets import load_digits

    from hwnas.data import TaskData, array_split, split_train_validation

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(1234).permutation(len(x))
    n_test = int(round(len(x) * TEST_FRACTION))
    test, rest = order[:n_test], order[n_test:]
    rest_x, rest_y = x[rest], y[rest]
    if spec.train_limit is not None:
        rest_x, rest_y = rest_x[:spec.train_limit], rest_y[:spec.train_limit]
    train_x, train_y, val_x, val_y = split_train_validation(rest_x, rest_y, spec.validation_fraction)
    preprocess = Preprocess.from_spec(spec.preprocessing, 1, (MEAN,), (STD,), MAX_VALUE)
    return TaskData.from_splits(
        name="digits", train=array_split(train_x, train_y, preprocess),
        validation=array_split(val_x, val_y, preprocess),
        test=array_split(x[test], y[test], preprocess), num_classes=10,
        preprocessing=preprocess.describe(),
    )
