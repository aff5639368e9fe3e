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

The records live in hwnas/config/text.py (a search space's ``dataset:`` holds the same keys);
loaded with the same error machinery, so a mistake names the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

from hwnas.config.fields import Frozen
from hwnas.config.load import load_record
from hwnas.config.text import LanguageDataSpec

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
