"""The ``dataset:`` section of a language-model search: which text, how many tokens for what.

.. code-block:: yaml

    dataset:
      text:                 # either `builtin: pydoc` or the three files
        train: data/train.jsonl   # calibration, saliency and healing text
        val: data/val.jsonl       # the search's own selection between candidates
        test: data/test.jsonl     # the reported perplexity
        format: auto        # auto (by suffix: .jsonl/.json -> jsonl, else txt) | txt | jsonl
        field: text         # the JSONL key holding a document's text
        mcq: data/mcq.jsonl # optional multiple-choice questions (see hwnas/llm/mcq.py)
      tokens:               # exact token budgets, each a multiple of sequence_length
        calibration: 2048   # from train: activation ranges for quantisation
        saliency: 4096      # from train, after calibration's: what pruning ranks by
        healing: 16384      # from train, after saliency's: fine-tuning after pruning
        selection: 2048     # from val
        evaluation: 4096    # from test
      sequence_length: 256

Kept out of hwnas/config/models.py (near its size cap); loaded with the same error machinery,
so a mistake names the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hwnas.config.fields import Frozen
from hwnas.config.load import load_record

BUILTIN_TEXTS = ("pydoc",)
# the order train's uses take their tokens in (disjoint, consecutive slices of train)
TRAIN_USES = ("calibration", "saliency", "healing")
SPLIT_OF_USE = {"calibration": "train", "saliency": "train", "healing": "train",
                "selection": "val", "evaluation": "test"}
Budget = Annotated[int, Field(ge=0, le=100_000_000)]


class TextSourceSpec(Frozen):
    """Where the text is: the demo text that ships with Python, or three files of one's own."""

    builtin: Literal["pydoc"] | None = None
    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    format: Literal["auto", "txt", "jsonl"] = "auto"
    field: Annotated[str, Field(min_length=1)] = "text"
    mcq: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TextSourceSpec":
        files = {"train": self.train, "val": self.val, "test": self.test}
        if self.builtin is not None and any(v is not None for v in files.values()):
            raise ValueError("give 'builtin: pydoc' or the files 'train', 'val' and 'test', "
                             "not both")
        if self.builtin is None:
            missing = [name for name, value in files.items() if value is None]
            if missing:
                raise ValueError(f"give 'builtin: pydoc' or all of 'train', 'val' and 'test' "
                                 f"(missing: {', '.join(missing)})")
        if self.builtin is not None and ("format" in self.model_fields_set
                                         or "field" in self.model_fields_set):
            raise ValueError("'format' and 'field' describe your own files; the builtin text "
                             "has neither")
        return self


class TokenBudgets(Frozen):
    """Tokens per use; 0 leaves a use out (no calibration text for an fp32 search, say)."""

    calibration: Budget = 2048
    saliency: Budget = 4096
    healing: Budget = 16384
    selection: Budget = 2048
    evaluation: Annotated[int, Field(ge=1, le=100_000_000)] = 4096


class LanguageDataSpec(Frozen):
    text: TextSourceSpec = TextSourceSpec(builtin="pydoc")
    tokens: TokenBudgets = TokenBudgets()
    # tokens per block; every block is a full window (no padding), so perplexity counts
    # sequence_length - 1 predicted tokens a block
    sequence_length: Annotated[int, Field(ge=8, le=32768)] = 256

    @model_validator(mode="after")
    def _whole_blocks(self) -> "LanguageDataSpec":
        # a budget that is not whole blocks would be silently rounded; say so instead
        length = self.sequence_length
        for use, tokens in self.tokens.model_dump().items():
            if tokens % length:
                below, above = tokens // length * length, (tokens // length + 1) * length
                raise ValueError(f"tokens.{use}: {tokens} is not a multiple of sequence_length "
                                 f"{length}; use {below or above}" + (f" or {above}" if below else ""))
        return self


class LanguageDataFile(Frozen):
    """A YAML file holding just the ``dataset:`` section (tests, the demo, one's own checks)."""

    dataset: LanguageDataSpec = LanguageDataSpec()


def load_language_data_spec(path: str | Path) -> LanguageDataSpec:
    """The ``dataset:`` section of ``path``; relative file paths in it are taken relative to
    the YAML file's folder (where the user wrote them), not the working directory."""
    path = Path(path)
    spec = load_record(path, LanguageDataFile, "language data file").dataset
    return with_base(spec, path.parent)


def with_base(spec: LanguageDataSpec, base: Path) -> LanguageDataSpec:
    """``spec`` with its relative file paths resolved against ``base``."""
    text = spec.text
    moved = {key: base / value for key in ("train", "val", "test", "mcq")
             if (value := getattr(text, key)) is not None and not value.is_absolute()}
    if not moved:
        return spec
    return spec.model_copy(update={"text": text.model_copy(update=moved)})
