"""A real image folder (DIR/<split>/<class>/<n>.png) cut from the Fashion-MNIST idx files
(Debian's dataset-fashion-mnist): nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwnas.data.fashion_mnist import DEBIAN_DIR, FILES, read_idx

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")


def fashion_mnist_folder(root: Path, per_class: dict[str, int], classes: int = 10,
                         odd_sizes: bool = False, source: Path = DEBIAN_DIR) -> Path:
    """``per_class``: split name -> images per class, e.g. {"train": 40, "val": 10}. With
    ``odd_sizes`` every third image is an RGB JPEG scaled to another size, as photos come."""
    from PIL import Image

    def find(stem: str) -> Path:
        return next(p for p in (source / stem, source / f"{stem}.gz") if p.exists())

    images = read_idx(find(FILES["train_images"]))
    labels = read_idx(find(FILES["train_labels"]))
    taken = np.zeros(len(labels), dtype=bool)
    for split, count in per_class.items():
        for label in range(classes):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            chosen = np.flatnonzero((labels == label) & ~taken)[:count]
            taken[chosen] = True
            for n, index in enumerate(chosen):
                image = Image.fromarray(images[index])
                if odd_sizes and n % 3 == 1:
                    image.convert("RGB").resize((36, 32)).save(folder / f"{n}.jpg", quality=95)
                else:
                    image.save(folder / f"{n}.png")
    return root
