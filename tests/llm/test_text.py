"""The language-model data: YAML keys, documents from .txt and .jsonl, exact budgets of blocks,
the demo split, and one clear error for each way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwnas.errors import ConfigError, HwnasError
from hwnas.llm.text import (builtin_splits, language_data, pydoc_split_of, read_documents,
                            token_stream)
from hwnas.config.text import LanguageDataSpec, TextSourceSpec, TokenBudgets
from hwnas.llm.text_config import load_language_data_spec
from hwnas.testing.llm import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def write_yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(body)
    return path


def files(tmp_path: Path, train: str, val: str = "val text\n", test: str = "test text\n",
          suffix: str = ".txt") -> TextSourceSpec:
    paths = {}
    for name, body in (("train", train), ("val", val), ("test", test)):
        paths[name] = tmp_path / f"{name}{suffix}"
        paths[name].write_text(body)
    return TextSourceSpec(**paths)


def small_budgets(**values: int) -> TokenBudgets:
    settings = dict(calibration=0, saliency=0, healing=0, selection=0, evaluation=16)
    settings.update(values)
    return TokenBudgets(**settings)


# --- the YAML section ------------------------------------------------------------------------


def test_defaults_are_the_demo_text_and_documented_budgets(tmp_path: Path) -> None:
    spec = load_language_data_spec(write_yaml(tmp_path, "dataset: {text: {builtin: pydoc}}\n"))
    assert spec.text.builtin == "pydoc" and spec.sequence_length == 256
    assert spec.tokens.model_dump() == dict(calibration=2048, saliency=4096, healing=16384,
                                            selection=2048, evaluation=4096)


def test_relative_files_are_found_beside_the_yaml_file(tmp_path: Path) -> None:
    spec = load_language_data_spec(write_yaml(
        tmp_path, "dataset:\n  text: {train: a.txt, val: b.txt, test: /abs/c.txt, mcq: q.jsonl}\n"))
    assert spec.text.train == tmp_path / "a.txt" and spec.text.mcq == tmp_path / "q.jsonl"
    assert spec.text.test == Path("/abs/c.txt")


@pytest.mark.parametrize("body, expected", [
    ("dataset: {tokens: {evaluation: 1000}}\n",
     "key 'dataset': tokens.evaluation: 1000 is not a multiple of sequence_length 256; use 768 or 1024"),
    ("dataset: {text: {train: a.txt}}\n",
     "give 'builtin: pydoc' or all of 'train', 'val' and 'test' (missing: val, test)"),
    ("dataset: {text: {builtin: pydoc, train: a.txt}}\n", "not both"),
    ("dataset: {text: {builtin: wiki}}\n", "key 'dataset.text.builtin'"),
    ("dataset: {text: {builtin: pydoc}, tokens: {evaluaton: 512}}\n",
     "key 'dataset.tokens.evaluaton': unknown key; allowed keys here: calibration, evaluation, "
     "healing, saliency, selection"),
    ("dataset: {text: {builtin: pydoc, format: csv}}\n", "key 'dataset.text.format'"),
    ("dataset: {sequence_length: 4}\n", "key 'dataset.sequence_length'"),
])
def test_a_wrong_key_is_one_error_naming_file_and_key(tmp_path: Path, body: str,
                                                      expected: str) -> None:
    path = write_yaml(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_language_data_spec(path)
    assert str(caught.value).startswith(f"{path}: invalid language data file: ")
    assert expected in str(caught.value)


# --- documents -------------------------------------------------------------------------------


def test_txt_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\nstill first\n\n  \nsecond\r\n\r\nthird\n\n\n")
    assert read_documents(path) == ["first line\nstill first", "second", "third"]


def test_jsonl_documents_come_from_the_named_field(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "one", "id": 1}\n\n{"body": "two"}\n')
    assert read_documents(path, field="body") == ["one", "two"]
    # format: txt reads the same file as text, whatever its suffix
    assert read_documents(path, fmt="txt") == ['{"body": "one", "id": 1}', '{"body": "two"}']


@pytest.mark.parametrize("name, content, expected", [
    ("missing.txt", None, "missing.txt: text file not found"),
    ("empty.txt", b"", "empty.txt: holds no text (empty, or only white space)"),
    ("blank.jsonl", b"\n\n", "blank.jsonl: holds no text"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary.txt: a binary file (NUL bytes)"),
    ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"),
     "latin1.txt: not UTF-8 text: byte 3 (line 1)"),
    ("list.jsonl", b'{"text": "a"}\n["text"]\n', "list.jsonl: line 2 is a JSON list, not an object"),
    ("nofield.jsonl", b'{"text": "a"}\n\n{"body": "b"}\n',
     "nofield.jsonl: line 3 has no key 'text' (its keys: body); set dataset.text.field"),
    ("number.jsonl", b'{"text": 5}\n', "number.jsonl: line 1: 'text' is a int, not a string"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": \n', "broken.jsonl: line 2 is not JSON"),
])
def test_each_bad_file_is_one_clear_error(tmp_path: Path, name: str, content: bytes | None,
                                          expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        read_documents(path)
    assert str(caught.value).startswith(str(tmp_path))
    assert expected in str(caught.value)
    assert isinstance(caught.value, HwnasError)


# --- tokens and budgets ----------------------------------------------------------------------


def test_documents_are_joined_with_eos_between_them(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    one = tokenizer("alpha beta", add_special_tokens=False)["input_ids"]
    two = tokenizer("gamma", add_special_tokens=False)["input_ids"]
    assert token_stream(tokenizer, ["alpha beta", "gamma"], 10**6) == one + [eos] + two
    # stops tokenising once the budget is met (a large file costs only its budget)
    assert token_stream(tokenizer, ["alpha beta", "gamma"], 1) == one


def test_each_use_takes_exactly_its_budget_from_its_split(tmp_path: Path, tokenizer) -> None:
    words = " ".join(f"w{i}" for i in range(3000))
    source = files(tmp_path, train=words, val=words[::-1], test="test " + words)
    spec = LanguageDataSpec(text=source, sequence_length=16,
                            tokens=small_budgets(calibration=32, saliency=48, healing=16,
                                                 selection=16, evaluation=64))
    data = language_data(spec, tokenizer)
    shapes = {use: getattr(data, use).shape for use in
              ("calibration", "saliency", "healing", "selection", "evaluation")}
    assert shapes == dict(calibration=(2, 16), saliency=(3, 16), healing=(1, 16),
                          selection=(1, 16), evaluation=(4, 16))
    train = np.asarray(tokenizer(words, add_special_tokens=False)["input_ids"][:96])
    # train's uses are consecutive, disjoint slices, in the documented order
    assert np.array_equal(np.concatenate([data.calibration.ravel(), data.saliency.ravel(),
                                          data.healing.ravel()]), train)
    test = tokenizer("test " + words, add_special_tokens=False)["input_ids"][:64]
    assert data.evaluation.ravel().tolist() == test and data.evaluation.dtype == np.int64
    used = {u.use: (u.split, u.tokens, u.blocks) for u in data.report.uses}
    assert used == {"calibration": ("train", 32, 2), "saliency": ("train", 48, 3),
                    "healing": ("train", 16, 1), "selection": ("val", 16, 1),
                    "evaluation": ("test", 64, 4)}
    import hashlib
    assert data.report.files[0] == ("train", str(source.train),
                                    hashlib.sha256(source.train.read_bytes()).hexdigest())
    assert "calibration: 32 tokens = 2 blocks of train" in data.report.lines()


def test_the_same_files_give_the_same_blocks(tmp_path: Path, tokenizer) -> None:
    spec = LanguageDataSpec(tokens=small_budgets(healing=512, evaluation=512),
                            sequence_length=64)
    other = tiny_tokenizer()  # a second load of the tokenizer too, not the same object
    first, second = language_data(spec, tokenizer), language_data(spec, other)
    assert np.array_equal(first.healing, second.healing)
    assert np.array_equal(first.evaluation, second.evaluation)
    assert first.report == second.report


def test_a_file_too_short_is_one_error_with_found_needed_and_the_keys(tmp_path: Path,
                                                                      tokenizer) -> None:
    source = files(tmp_path, train="a few words only")
    found = len(tokenizer("a few words only", add_special_tokens=False)["input_ids"])
    spec = LanguageDataSpec(text=source, sequence_length=16,
                            tokens=small_budgets(calibration=16, healing=32))
    with pytest.raises(ConfigError) as caught:
        language_data(spec, tokenizer)
    assert str(caught.value) == (
        f"{source.train}: the train text is too short: {found} tokens found, 48 needed "
        f"(tokens.calibration + tokens.healing = 16 + 32); lower dataset.tokens.calibration or "
        f"dataset.tokens.healing (in multiples of sequence_length 16) or give more text")


def test_a_use_of_zero_tokens_reads_nothing_from_its_split(tmp_path: Path, tokenizer) -> None:
    source = files(tmp_path, train="x", val="y", test=" ".join(["word"] * 200))
    data = language_data(LanguageDataSpec(text=source, sequence_length=16,
                                          tokens=small_budgets()), tokenizer)
    assert data.healing.shape == (0, 16) and data.evaluation.shape == (1, 16)


def test_the_demo_split_is_by_topic_key_disjoint_and_stable() -> None:
    from pydoc_data.topics import topics

    splits = builtin_splits()
    sizes = {name: len(split.documents) for name, split in splits.items()}
    assert sum(sizes.values()) == len(topics) and sizes["train"] > sizes["test"] > 0
    assert set(splits["test"].documents).isdisjoint(splits["train"].documents)
    # a topic's split depends on its key alone (a hash, not its position among the topics)
    assert pydoc_split_of("if") == pydoc_split_of("if") and \
        {pydoc_split_of(k) for k in topics} == {"train", "val", "test"}
    assert builtin_splits()["test"].sha256 == splits["test"].sha256


def test_the_demo_text_fills_the_default_budgets(tokenizer) -> None:
    data = language_data(LanguageDataSpec(), tokenizer)
    assert data.evaluation.shape == (16, 256) and data.healing.shape == (64, 256)
    assert data.report.files[2][1].startswith("builtin:pydoc")


def test_the_questions_named_in_the_section_are_read_with_the_text(tmp_path: Path,
                                                                  tokenizer) -> None:
    source = files(tmp_path, train="x", val="y", test=" ".join(["word"] * 200))
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text('{"question": "q?", "options": ["a", "b"], "answer": "B"}\n')
    spec = LanguageDataSpec(text=source.model_copy(update={"mcq": mcq}), sequence_length=16,
                            tokens=small_budgets())
    (question,) = language_data(spec, tokenizer).questions
    assert (question.options, question.answer) == (("a", "b"), 1)
    mcq.write_text('{"question": "q?", "options": ["a", "b"]}\n')
    with pytest.raises(ConfigError, match="line 1 has no 'answer'"):
        language_data(spec, tokenizer)
    assert language_data(spec.model_copy(update={"text": source}), tokenizer).questions == ()
