"""Image folders as people have them: DIR/<class>/<image>, decoded from disk batch by batch.

The layout is torchvision's ImageFolder: one sub-folder per class, classes in sorted order;
validation and test folders must hold the same classes. Without a validation or test folder,
those splits are held out of the training folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwnas.config.models import DatasetSpec
from hwnas.data.preprocess import Preprocess
from hwnas.data.splits import Split
from hwnas.errors import ConfigError

if TYPE_CHECKING:
    from hwnas.data import TaskData

# what PIL opens; the same list torchvision's ImageFolder accepts
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# without a mean/std in the spec: map [0, 1] to [-1, 1] (the data set's own statistics are
# not known before reading all of it)
DEFAULT_MEAN, DEFAULT_STD = (0.5,), (0.5,)


def scan(folder: Path, key: str, classes: list[str] | None = None
         ) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, labels); ``classes`` fixes the names (val/test folders)."""
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder; it must hold one sub-folder per "
                          f"class (DIR/<class>/<image>)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise ConfigError(f"{key}: {folder} has {len(classes)} class sub-folder(s); a "
                              f"classifier needs at least 2 (DIR/<class>/<image>)")
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ConfigError(f"{key}: {folder} must hold the training folder's classes; "
                          f"missing {missing}, extra {extra}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = sorted(p for p in (folder / name).rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise ConfigError(f"{key}: {folder / name} holds no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        paths += images
        labels += [label] * len(images)
    return classes, paths, np.asarray(labels, dtype=np.int64)


class ImageFolderSplit(Split):
    """Image files decoded with PIL and preprocessed with torchvision when a batch is asked for."""

    def __init__(self, paths: list[Path], labels: np.ndarray, preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocess = preprocess

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.preprocess.channels == 1 else "RGB")
                pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"{path}: cannot read the image ({exc})") from None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def load(self, indices: np.ndarray) -> np.ndarray:
        images = [self.preprocess(self._decode(self.paths[int(i)])) for i in indices]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ConfigError(f"dataset.image_folder: images of different sizes {sorted(shapes)} "
                              f"(e.g. {self.paths[int(indices[0])]}); set "
                              f"dataset.preprocessing.resize: [H, W] (or resize and center_crop)")
        return np.stack(images) if images else np.zeros((0,), np.float32)

    def fingerprint(self) -> str:
        """Class folder, file name, size and label of every image: the same on every machine
        holding a copy of the folder (reading every byte would cost an epoch; modification
        times change with each copy)."""
        digest = hashlib.sha256(self.preprocess.key().encode())
        for path, label in zip(self.paths, self.labels):
            digest.update(f"{path.parent.name}/{path.name}\0{path.stat().st_size}\0{label}\n"
                          .encode())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray) -> "ImageFolderSplit":
        return ImageFolderSplit([self.paths[int(i)] for i in indices], self.labels[indices],
                                self.preprocess)


def load_image_folder(spec: DatasetSpec) -> "TaskData":
    from hwnas.data import TaskData, held_out

    folders = spec.image_folder
    assert folders is not None
    classes, paths, labels = scan(Path(folders.train).expanduser(), "dataset.image_folder.train")
    wanted = spec.preprocessing
    channels = (wanted.channels if wanted and wanted.channels else 3)
    preprocess = Preprocess.from_spec(wanted, channels, DEFAULT_MEAN * channels,
                                      DEFAULT_STD * channels)
    train: Split = ImageFolderSplit(paths, labels, preprocess)

    def other(folder: Path | None, key: str) -> Split | None:
        if folder is None:
            return None
        _, other_paths, other_labels = scan(Path(folder).expanduser(), key, classes)
        return ImageFolderSplit(other_paths, other_labels, preprocess)

    test = other(folders.test, "dataset.image_folder.test")
    if test is None:
        train, test = held_out(train, spec.test_fraction, seed=4321)
    validation = other(folders.val, "dataset.image_folder.val")
    if validation is None:
        train, validation = held_out(train, spec.validation_fraction, seed=0)
    if spec.train_limit is not None:
        train = train.subset(np.arange(min(spec.train_limit, len(train))))
    return TaskData.from_splits(
        name=f"image-folder-{Path(folders.train).name}", train=train, validation=validation,
        test=test, num_classes=len(classes),
        preprocessing={**preprocess.describe(), "classes": classes,
                       "source": {"train": str(folders.train), "val": str(folders.val or ""),
                                  "test": str(folders.test or "")}})
