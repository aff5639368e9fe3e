"""Preprocessing with torchvision's transforms: channels, resize, center crop, normalise.

The same steps serve images decoded from files and image arrays held in memory (applied to a
whole batch at once), and they describe themselves for the model card: deployment must run
exactly these steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from hwnas.config.dataset import PreprocessingSpec


def _size(value: int | list[int] | None) -> list[int] | None:
    return None if value is None else ([value] if isinstance(value, int) else list(value))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Raw images (NCHW or CHW; pixel values times ``scale`` lie in [0, 1]) -> normalised
    float32 NCHW."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: tuple[int, ...] | None = None  # one value: the shorter side; two: [height, width]
    center_crop: tuple[int, ...] | None = None
    max_value: int = 255  # raw pixel value of white: 255 for 8-bit images, 16 for digits

    @classmethod
    def from_spec(cls, spec: PreprocessingSpec | None, channels: int,
                  mean: tuple[float, ...], std: tuple[float, ...],
                  max_value: int = 255) -> "Preprocess":
        """The spec's settings over the data set's own defaults."""
        spec = spec or PreprocessingSpec()
        channels = spec.channels or channels
        mean = tuple(spec.mean) if spec.mean is not None else mean
        std = tuple(spec.std) if spec.std is not None else std
        if len(mean) not in (1, channels):
            raise ValueError(f"{len(mean)} mean/std values for {channels} channels")
        resize, crop = _size(spec.resize), _size(spec.center_crop)
        return cls(channels, mean, std, tuple(resize) if resize else None,
                   tuple(crop) if crop else None, max_value)

    @property
    def changes_size(self) -> bool:
        return self.resize is not None or self.center_crop is not None

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        import torchvision.transforms.v2.functional as F

        tensor = torch.from_numpy(np.array(images, dtype=np.float32)) / self.max_value
        have = tensor.shape[-3]
        if have != self.channels and self.channels == 1:
            tensor = F.rgb_to_grayscale(tensor[..., :3, :, :])
        elif have != self.channels and have != 1:
            raise ValueError(f"cannot make {self.channels} channels from {have}")
        if self.resize is not None:
            tensor = F.resize(tensor, list(self.resize), antialias=True)
        if self.center_crop is not None:
            tensor = F.center_crop(tensor, list(self.center_crop))
        if tensor.shape[-3] != self.channels:  # grayscale -> RGB: the value in every channel
            tensor = tensor.expand(*tensor.shape[:-3], self.channels, *tensor.shape[-2:])
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return ((tensor - mean) / std).contiguous().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """For model cards: what deployment must do to an image, in order."""
        steps = [f"convert to {'grayscale' if self.channels == 1 else 'RGB'}"]
        if self.resize is not None:
            steps.append(f"resize to {list(self.resize)} (bilinear, antialiased)"
                         if len(self.resize) == 2 else
                         f"resize the shorter side to {self.resize[0]} (bilinear, antialiased)")
        if self.center_crop is not None:
            steps.append(f"center crop {list(self.center_crop)}")
        steps += [f"scale pixels to [0, 1] (divide by {self.max_value})",
                  "subtract mean, divide by std (per channel)"]
        return {"layout": "NCHW", "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "scale": 1 / self.max_value,
                "resize": list(self.resize) if self.resize else None,
                "center_crop": list(self.center_crop) if self.center_crop else None,
                "steps": steps, "formula": f"(pixel/{self.max_value} - mean) / std"}

    def key(self) -> str:
        return repr(dataclasses.astuple(self))
