"""The text of a language-model search (``dataset: {text: ..., tokens: ..., sequence_length:
...}``): which text, how many tokens for what. The records only; hwnas/llm/text.py reads the
text, hwnas/llm/text_config.py loads a YAML file holding just this section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hwnas.config.fields import Frozen

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
