"""The ``dataset:`` section of a search space: images (builtin, entry point, image folders) or,
for a language model, text (hwnas/config/text.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hwnas.config.fields import EntryPoint, Frozen
from hwnas.config.text import LanguageDataSpec, TextSourceSpec, TokenBudgets


PixelSize = Annotated[int, Field(ge=1, le=8192)]


class PreprocessingSpec(Frozen):
    """torchvision transforms applied to every image, in this order: channels, resize,
    center crop, scale to [0, 1], normalise. The same steps must run in deployment; they are
    recorded in model cards."""

    channels: Literal[1, 3] | None = None  # 1: grayscale, 3: RGB (default: the data's own)
    resize: PixelSize | Annotated[list[PixelSize], Field(min_length=2, max_length=2)] | None = None
    center_crop: PixelSize | Annotated[list[PixelSize], Field(min_length=2, max_length=2)] | None = None
    mean: Annotated[list[float], Field(min_length=1, max_length=3)] | None = None
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=3)] | None = None

    @model_validator(mode="after")
    def _mean_std_fit(self) -> "PreprocessingSpec":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give 'mean' and 'std' together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("'mean' and 'std' need the same number of values (1, or one per channel)")
        if self.mean is not None and self.channels is not None and len(self.mean) not in (1, self.channels):
            raise ValueError(f"'mean' and 'std' need 1 or {self.channels} values for "
                             f"{self.channels} channels")
        return self


class ImageFolderSpec(Frozen):
    """Folders of class sub-folders (torchvision ImageFolder layout: DIR/<class>/<image>)."""

    train: Path
    val: Path | None = None  # default: dataset.validation_fraction of train
    test: Path | None = None  # default: dataset.test_fraction of train


class DatasetSpec(Frozen):
    builtin: Literal["fashion-mnist", "digits"] | None = None
    entry_point: EntryPoint | None = None
    image_folder: ImageFolderSpec | None = None
    # builtin and image_folder data: e.g. {resize: 64, channels: 3} for a torchvision model
    preprocessing: PreprocessingSpec | None = None
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1  # image folders without test
    path: Path | None = None  # folder of the idx files for fashion-mnist
    download: bool = False  # torchvision download, only where a network exists
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    calibration_samples: Annotated[int, Field(ge=8, le=10000)] = 256
    train_limit: Annotated[int, Field(ge=100)] | None = None
    # evaluate on the first N test samples only (a quicker, noisier test figure)
    test_limit: Annotated[int, Field(ge=100)] | None = None

    # a language model's text (base_model.causal_lm): hwnas/config/text.py
    text: TextSourceSpec | None = None
    tokens: TokenBudgets = TokenBudgets()
    sequence_length: Annotated[int, Field(ge=8, le=32768)] = 256

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        sources = (self.builtin, self.entry_point, self.image_folder, self.text)
        if sum(s is not None for s in sources) != 1:
            raise ValueError("give exactly one of 'builtin' (allowed: fashion-mnist, digits), "
                             "'entry_point' ('package.module:function'), 'image_folder' "
                             "({train: DIR, val: DIR, test: DIR}) or, for a language model, "
                             "'text' ({builtin: pydoc} or {train: FILE, val: FILE, test: FILE})")
        language = {"tokens", "sequence_length"} & self.model_fields_set
        if self.text is None and language:
            raise ValueError(f"{', '.join(sorted(language))}: for a language model's 'text' only")
        if self.text is not None:
            image = sorted({"preprocessing", "test_fraction", "path", "download",
                            "validation_fraction", "calibration_samples", "train_limit",
                            "test_limit"} & self.model_fields_set)
            if image:
                raise ValueError(f"{', '.join(image)}: for image data; a language model's text "
                                 f"takes 'tokens' and 'sequence_length'")
            self.language()  # whole blocks, or the error names the budget
        return self

    def language(self) -> LanguageDataSpec:
        """The language-model data section (``text`` is set)."""
        assert self.text is not None
        return LanguageDataSpec(text=self.text, tokens=self.tokens,
                                sequence_length=self.sequence_length)
        if self.preprocessing is not None and self.entry_point is not None:
            raise ValueError("'preprocessing' applies to builtin and image_folder data; an "
                             "entry point returns data already preprocessed")
        return self
