"""Multiple-choice questions: the file's shapes and errors, the harness's pairing of prompt and
option tokens, and acc / acc_norm / acc_bytes from the options' log-likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwnas.errors import ConfigError
from hwnas.llm.mcq import (Question, continuation_logprob, encode_pair, read_questions,
                           score_questions)
from hwnas.testing.llm import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def jsonl(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_the_medmcqa_and_pubmedqa_shapes_are_read(tmp_path: Path) -> None:
    path = jsonl(tmp_path,
                 {"question": "Which?", "options": ["red", "blue", "green"], "answer": 2},
                 "",
                 {"question": "Or?", "options": ["x", "y"], "answer": "b"},
                 {"question": "Keyed?", "options": {"A": "one", "B": "two"}, "answer": "B"},
                 {"question": "Is it?", "options": ["yes", "no", "maybe"], "answer": 0,
                  "context": "An abstract."})
    questions = read_questions(path)
    assert [(q.options, q.answer, q.line) for q in questions] == [
        (("red", "blue", "green"), 2, 1), (("x", "y"), 1, 3), (("one", "two"), 1, 4),
        (("yes", "no", "maybe"), 0, 5)]
    assert questions[0].prompt == "Question: Which?\nAnswer:"
    assert questions[3].prompt == "An abstract.\nQuestion: Is it?\nAnswer:"


@pytest.mark.parametrize("line, expected", [
    ('["a"]', "line 2 is a JSON list, not an object"),
    ('{"question": "q", "answer": 0}', "line 2 has no 'options'"),
    ('{"question": "q", "options": ["a", "b"], "answer": 2}',
     "line 2: 'answer' 2 is out of range; there are 2 options (0 to 1)"),
    ('{"question": "q", "options": ["a", "b"], "answer": "C"}',
     "line 2: 'answer' 'C' names no option; allowed: A, B or an index 0 to 1"),
    ('{"question": "q", "options": ["a", "b"], "answer": true}', "line 2: 'answer' is True"),
    ('{"question": "q", "options": ["a"], "answer": 0}', "line 2: 1 options; a question needs 2"),
    ('{"question": "q", "options": ["a", ""], "answer": 0}', "line 2: option B is not text"),
    ('{"question": "", "options": ["a", "b"], "answer": 0}', "line 2: 'question' is ''"),
    ('{"question": "q", "options": "a or b", "answer": 0}', "line 2: 'options' is 'a or b'"),
    ('{"question": "q", "options": ["a", "b"], "answer": 0', "line 2 is not JSON"),
])
def test_a_bad_line_is_an_error_naming_it(tmp_path: Path, line: str, expected: str) -> None:
    path = jsonl(tmp_path, {"question": "fine", "options": ["a", "b"], "answer": 0}, line)
    with pytest.raises(ConfigError) as caught:
        read_questions(path)
    assert str(caught.value).startswith(f"{path}: ") and expected in str(caught.value)


def test_a_missing_or_empty_question_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="question file not found"):
        read_questions(tmp_path / "none.jsonl")
    with pytest.raises(ConfigError, match="holds no questions"):
        read_questions(jsonl(tmp_path, ""))


def test_the_pair_is_tokenised_whole_as_the_harness_does(tokenizer) -> None:
    context, continuation = encode_pair(tokenizer, "Question: why?\nAnswer: ", "because")
    whole = tokenizer("Question: why?\nAnswer: because", add_special_tokens=False)["input_ids"]
    assert context + continuation == whole  # the trailing space moved to the continuation
    assert context == tokenizer("Question: why?\nAnswer:", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(continuation) == " because"


def test_continuation_logprob_is_the_summed_log_softmax() -> None:
    import torch

    logits = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    tokens = [1, 2, 3, 4, 5, 6]
    expected = torch.log_softmax(torch.from_numpy(logits).double(), -1)[[3, 4], [5, 6]].sum()
    assert continuation_logprob(logits, tokens, 2) == pytest.approx(float(expected), abs=1e-12)


def test_acc_norm_divides_by_characters_and_acc_bytes_by_bytes(tokenizer) -> None:
    # three ways to pick: the raw sum favours option 0, per character option 1 (4 characters
    # of 2 bytes each in option 0), per byte option 0 again
    options = ("\u00e9\u00e9\u00e9\u00e9", "abcde")
    scores = {" " + options[0]: -4.4, " " + options[1]: -5.2}

    def loglikelihood(context: list[int], continuation: list[int]) -> float:
        return scores[tokenizer.decode(continuation)]

    right_by_chars = Question("Question: q\nAnswer:", options, 1, 1)
    result = score_questions([right_by_chars], tokenizer, loglikelihood)
    assert (result.acc, result.acc_norm, result.acc_bytes) == (0.0, 1.0, 0.0)
    assert result.loglikelihoods == ((-4.4, -5.2),)
    right_by_sum = Question("Question: q\nAnswer:", options, 0, 2)
    both = score_questions([right_by_chars, right_by_sum], tokenizer, loglikelihood)
    assert (both.acc, both.acc_norm, both.acc_bytes) == (0.5, 0.5, 0.5)
