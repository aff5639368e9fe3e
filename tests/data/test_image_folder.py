"""Image folders as people have them, and data preprocessed per batch (real Fashion-MNIST
images written as PNG/JPEG files; torchvision transforms; nothing mocked)."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from hwnas.config.models import DatasetSpec
from hwnas.data import load_task
from hwnas.data.fashion_mnist import MEAN, STD
from hwnas.errors import ConfigError
from hwnas.testing.images import CLASSES, fashion_mnist_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fashion_mnist_folder(tmp_path_factory.mktemp("images"),
                                {"train": 12, "val": 4, "test": 4}, classes=4, odd_sizes=True)


def spec(folder, **preprocessing):
    return DatasetSpec.model_validate({
        "image_folder": {"train": str(folder / "train"), "val": str(folder / "val"),
                         "test": str(folder / "test")},
        "preprocessing": preprocessing or None})


def test_splits_classes_and_preprocessing_recorded(folder):
    task = load_task(spec(folder, resize=[32, 32], channels=3, mean=[0.5, 0.5, 0.5],
                          std=[0.25, 0.25, 0.25]))
    assert task.input_shape == (3, 32, 32) and task.num_classes == 4
    assert (len(task.train), len(task.validation), len(task.test)) == (48, 16, 16)
    assert task.preprocessing["classes"] == list(sorted(CLASSES[:4]))
    assert task.preprocessing["resize"] == [32, 32] and task.preprocessing["channels"] == 3
    assert any("resize to [32, 32]" in step for step in task.preprocessing["steps"])
    images, labels = next(task.train.batches(48))
    assert images.shape == (48, 3, 32, 32) and images.dtype == np.float32
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]


def test_pixels_are_torchvision_transforms_of_the_file(folder):
    task = load_task(spec(folder, resize=40, center_crop=32, channels=1, mean=[0.3], std=[0.4]))
    path = task.test.paths[1]  # an RGB JPEG of another size: converted, resized, cropped
    assert path.suffix == ".jpg"
    pixels = torch.from_numpy(np.array(Image.open(path).convert("L"))).float()[None] / 255
    expected = (F.center_crop(F.resize(pixels, [40], antialias=True), [32, 32]) - 0.3) / 0.4
    got = task.test.batch(np.array([1]))[0][0]
    assert np.allclose(got, expected.numpy(), atol=1e-5)


def test_images_are_read_from_disk_per_batch(folder, tmp_path):
    copy = fashion_mnist_folder(tmp_path / "copy", {"train": 6}, classes=2)
    task = load_task(DatasetSpec.model_validate({"image_folder": {"train": str(copy / "train")},
                                                 "validation_fraction": 0.2,
                                                 "test_fraction": 0.2}))
    first = task.train.paths[0]
    first.unlink()  # a file outside the batch asked for is never read
    assert task.train.batch(np.array([1, 2]))[0].shape == (2, 3, 28, 28)
    with pytest.raises(ConfigError, match=str(first.name)):
        task.train.batch(np.array([0]))


def test_held_out_splits_without_val_and_test_folders(folder):
    task = load_task(DatasetSpec.model_validate({"image_folder": {"train": str(folder / "train")},
                                                 "validation_fraction": 0.25}))
    train, val, test = (set(map(str, s.paths)) for s in (task.train, task.validation, task.test))
    assert not (train & val or train & test or val & test)
    assert len(train) + len(val) + len(test) == 48 and len(test) == round(48 * 0.1)
    again = load_task(DatasetSpec.model_validate({"image_folder": {"train": str(folder / "train")},
                                                  "validation_fraction": 0.25}))
    assert again.validation.paths == task.validation.paths and again.fingerprint == task.fingerprint


def test_mixed_image_sizes_without_resize_say_what_to_set(folder):
    task = load_task(spec(folder))
    with pytest.raises(ConfigError, match="different sizes.*dataset.preprocessing.resize"):
        next(task.train.batches(12))


def test_val_folder_with_other_classes_is_refused(folder, tmp_path):
    other = fashion_mnist_folder(tmp_path / "other", {"val": 2}, classes=3)
    with pytest.raises(ConfigError, match=r"image_folder.val.*missing \['dress'\]"):
        load_task(DatasetSpec.model_validate({"image_folder": {"train": str(folder / "train"),
                                                               "val": str(other / "val")}}))
    with pytest.raises(ConfigError, match="not a folder"):
        load_task(DatasetSpec.model_validate({"image_folder": {"train": str(tmp_path / "none")}}))


def test_fashion_mnist_resized_to_3x64x64_per_batch():
    task = load_task(DatasetSpec.model_validate({"builtin": "fashion-mnist", "train_limit": 1000,
                                                 "preprocessing": {"resize": 64, "channels": 3}}))
    assert task.input_shape == (3, 64, 64)
    raw = task.train.images[:2]  # 28x28 bytes in memory; the 64x64 copy is made per batch
    assert raw.shape == (2, 1, 28, 28) and raw.dtype == np.uint8
    expected = (F.resize(torch.from_numpy(raw).float() / 255, [64], antialias=True) - MEAN) / STD
    got = task.train.batch(np.arange(2))[0]
    assert got.shape == (2, 3, 64, 64)
    assert np.allclose(got, expected.expand(2, 3, 64, 64).numpy(), atol=1e-5)
    with pytest.raises(Exception, match="streamed from disk or preprocessed per batch"):
        task.train_x  # noqa: B018 - arrays are not materialised
