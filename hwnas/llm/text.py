"""The domain text a language-model search calibrates, ranks saliency, heals and evaluates on.

Documents come from a plain-text file (documents separated by blank lines), a JSONL file (one
object a line, the text under a named key) or the demo text that ships with Python
(``pydoc_data.topics``, split into train/val/test by a hash of each topic's key). They are
tokenised with the model's own tokenizer, joined with the EOS token between documents, and
cut into full blocks of ``sequence_length`` tokens. Each use takes exactly its budget: the
train uses take consecutive, disjoint slices of train's token stream (calibration, then
saliency, then healing), selection the start of val's, evaluation the start of test's.
Everything is deterministic: the same files and tokenizer give the same blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.errors import ConfigError
from hwnas.llm.mcq import Question, read_questions
from hwnas.config.text import SPLIT_OF_USE, TRAIN_USES, LanguageDataSpec

SPLITS = ("train", "val", "test")
# a document boundary in a .txt file: a line holding nothing but white space
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """The documents of one split and where they came from."""

    name: str  # train, val or test
    source: str  # the file, or "builtin:pydoc (Python 3.x)"
    sha256: str  # of the file's bytes (builtin: of the documents joined with blank lines)
    documents: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class UseBudget:
    use: str
    split: str
    tokens: int
    blocks: int


@dataclasses.dataclass(frozen=True)
class TextBudgetReport:
    """What the search actually used: tokens and blocks per use, the files by sha256."""

    sequence_length: int
    uses: tuple[UseBudget, ...]
    files: tuple[tuple[str, str, str], ...]  # (split, source, sha256)
    tokenizer: str

    def lines(self) -> list[str]:
        out = [f"sequence length {self.sequence_length} tokens, tokenizer {self.tokenizer}"]
        out += [f"{u.use}: {u.tokens} tokens = {u.blocks} blocks of {u.split}" for u in self.uses]
        out += [f"{split}: {source} sha256 {sha}" for split, source, sha in self.files]
        return out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LanguageData:
    """Token blocks per use, each an int64 array [blocks, sequence_length] (0 rows if unused)."""

    calibration: np.ndarray
    saliency: np.ndarray
    healing: np.ndarray
    selection: np.ndarray
    evaluation: np.ndarray
    report: TextBudgetReport
    questions: tuple[Question, ...] = ()  # dataset.text.mcq's, read and checked up front


# --- reading documents -----------------------------------------------------------------------


def _decoded(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: text file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give a .txt or .jsonl file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the text file: {exc.strerror or exc}") from None
    if b"\x00" in raw[:65536]:  # UTF-8 text never holds NUL; binaries nearly always do
        raise ConfigError(f"{path}: a binary file (NUL bytes), not UTF-8 text; give a .txt "
                          f"or .jsonl file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte {exc.start} (line {line}) "
                          f"is not ({exc.reason}); convert the file to UTF-8") from None


def text_format(path: Path, fmt: str) -> str:
    """``auto``: .jsonl/.json files are JSONL, anything else plain text."""
    if fmt != "auto":
        return fmt
    return "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "txt"


def read_documents(path: str | Path, fmt: str = "auto", field: str = "text") -> list[str]:
    """The documents of a file, in file order; an error names the file (and line) at fault."""
    path = Path(path)
    text = _decoded(path)
    if text_format(path, fmt) == "txt":
        documents = [d.strip() for d in BLANK_LINE.split(text.replace("\r\n", "\n"))]
        documents = [d for d in documents if d]
    else:
        documents = _jsonl_documents(path, text, field)
    if not documents:
        raise ConfigError(f"{path}: holds no text (empty, or only white space)")
    return documents


def _jsonl_documents(path: Path, text: str, field: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, say) are no records
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number} is not JSON ({exc.msg}); a JSONL file "
                              f"holds one JSON object a line") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: line {number} is a JSON {type(record).__name__}, not "
                              f"an object; each line is an object such as {{\"{field}\": \"...\"}}")
        if field not in record:
            keys = ", ".join(sorted(record)[:8]) or "none"
            raise ConfigError(f"{path}: line {number} has no key '{field}' (its keys: {keys}); "
                              f"set dataset.text.field to the key holding the text")
        if not isinstance(record[field], str):
            raise ConfigError(f"{path}: line {number}: '{field}' is a "
                              f"{type(record[field]).__name__}, not a string")
        if record[field].strip():
            documents.append(record[field])
    return documents


def _file_split(name: str, path: Path, fmt: str, field: str) -> TextSplit:
    documents = read_documents(path, fmt, field)
    return TextSplit(name, str(path), hashlib.sha256(path.read_bytes()).hexdigest(),
                     tuple(documents))


def pydoc_split_of(key: str) -> str:
    """The split of a pydoc topic: a hash of its key, so a topic never moves between splits
    when Python adds topics (10% test, 10% val, 80% train)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def builtin_splits() -> dict[str, TextSplit]:
    """The demo text: Python's own reference prose, one document per pydoc topic."""
    from pydoc_data.topics import topics

    source = f"builtin:pydoc (Python {sys.version_info.major}.{sys.version_info.minor})"
    splits = {}
    for name in SPLITS:
        documents = tuple(topics[key] for key in sorted(topics) if pydoc_split_of(key) == name)
        sha = hashlib.sha256("\n\n".join(documents).encode()).hexdigest()
        splits[name] = TextSplit(name, source, sha, documents)
    return splits


def text_splits(spec: LanguageDataSpec) -> dict[str, TextSplit]:
    text = spec.text
    if text.builtin is not None:
        return builtin_splits()
    paths = {"train": text.train, "val": text.val, "test": text.test}
    return {name: _file_split(name, Path(path), text.format, text.field)
            for name, path in paths.items() if path is not None}


# --- tokens and blocks -----------------------------------------------------------------------


def token_stream(tokenizer: Any, documents: tuple[str, ...] | list[str], needed: int) -> list[int]:
    """Document tokens joined by EOS, tokenised only as far as ``needed`` tokens (a large file
    costs no more than its budget); all of them when there are fewer."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token to separate documents with; set "
                          "eos_token in the model folder's tokenizer_config.json")
    stream: list[int] = []
    for index, document in enumerate(documents):
        if index:
            stream.append(eos)
        stream += tokenizer(document, add_special_tokens=False)["input_ids"]
        if len(stream) >= needed:
            break
    return stream


def _budget_keys(uses: list[str]) -> str:
    return " + ".join(f"tokens.{use}" for use in uses)


def language_data(spec: LanguageDataSpec, tokenizer: Any) -> LanguageData:
    """Exactly each use's budget of full blocks; ONE error per split too short for its uses."""
    splits = text_splits(spec)
    length, budgets = spec.sequence_length, spec.tokens.model_dump()
    blocks: dict[str, np.ndarray] = {}
    for name in SPLITS:
        uses = [use for use in (*TRAIN_USES, "selection", "evaluation")
                if SPLIT_OF_USE[use] == name]
        needed = sum(budgets[use] for use in uses)
        if needed == 0:
            blocks.update({use: np.zeros((0, length), dtype=np.int64) for use in uses})
            continue
        split = splits[name]
        stream = token_stream(tokenizer, split.documents, needed)
        if len(stream) < needed:
            asked = [use for use in uses if budgets[use]]
            raise ConfigError(
                f"{split.source}: the {name} text is too short: {len(stream)} tokens found, "
                f"{needed} needed ({_budget_keys(asked)} = "
                f"{' + '.join(str(budgets[u]) for u in asked)}); lower dataset."
                f"{' or dataset.'.join(f'tokens.{u}' for u in asked)} (in multiples of "
                f"sequence_length {length}) or give more text")
        start = 0
        for use in uses:
            taken = np.asarray(stream[start:start + budgets[use]], dtype=np.int64)
            blocks[use] = taken.reshape(-1, length)
            start += budgets[use]
    report = TextBudgetReport(
        sequence_length=length,
        uses=tuple(UseBudget(use, SPLIT_OF_USE[use], budgets[use], budgets[use] // length)
                   for use in budgets),
        files=tuple((name, splits[name].source, splits[name].sha256) for name in SPLITS),
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__))
    # questions are read with the text so that a bad line stops the search before it starts
    questions = tuple(read_questions(spec.text.mcq)) if spec.text.mcq is not None else ()
    return LanguageData(report=report, questions=questions, **blocks)
