"""Multiple-choice questions scored by log-likelihood, as lm-evaluation-harness scores them.

A JSONL file, one question a line, the MedMCQA / PubMedQA shape::

    {"question": "...", "options": ["...", "..."], "answer": 1}
    {"question": "...", "options": {"A": "...", "B": "..."}, "answer": "B", "context": "..."}

``answer`` is a 0-based index or a letter (A = the first option; with an options mapping, its
key). ``context`` (optional, PubMedQA's abstract) goes before the question.

The prompt is ``[context\\n]Question: <question>\\nAnswer:``; each option is the continuation
``" " + option``. An option's score is the sum of the log-probabilities of its tokens given
the prompt (the harness's ``loglikelihood``). ``acc`` picks the highest sum; ``acc_norm``
divides each sum by the option's length in characters first, ``acc_bytes`` by its length in
UTF-8 bytes (the harness's ``completion_len`` and ``byte_length``): a long option is not
penalised for having more tokens.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.errors import ConfigError, excerpt

DELIMITER = " "  # the harness's target_delimiter between the prompt and an option
LETTERS = string.ascii_uppercase

# (context token ids, continuation token ids) -> summed log-probability of the continuation
LogLikelihood = Callable[[list[int], list[int]], float]


@dataclasses.dataclass(frozen=True)
class Question:
    prompt: str
    options: tuple[str, ...]
    answer: int  # index into options
    line: int  # in the file, for a message about it


@dataclasses.dataclass(frozen=True)
class McqResult:
    questions: int
    acc: float
    acc_norm: float
    acc_bytes: float
    # per question: the options' summed log-likelihoods (for a report, or a check by hand)
    loglikelihoods: tuple[tuple[float, ...], ...]

    def line(self) -> str:
        return (f"{self.questions} questions: acc {self.acc:.4f}, acc_norm {self.acc_norm:.4f}, "
                f"acc_bytes {self.acc_bytes:.4f}")


def _answer_index(path: Path, number: int, answer: Any, keys: list[str]) -> int:
    where = f"{path}: line {number}"
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ConfigError(f"{where}: 'answer' is {excerpt(answer)}; give an option's 0-based "
                          f"index or its letter")
    if isinstance(answer, int):
        if not 0 <= answer < len(keys):
            raise ConfigError(f"{where}: 'answer' {answer} is out of range; there are "
                              f"{len(keys)} options (0 to {len(keys) - 1})")
        return answer
    label = answer.strip()
    if label in keys:
        return keys.index(label)
    if label.upper() in keys:
        return keys.index(label.upper())
    raise ConfigError(f"{where}: 'answer' {excerpt(answer)} names no option; allowed: "
                      f"{', '.join(keys)} or an index 0 to {len(keys) - 1}")


def _question(path: Path, number: int, record: Any) -> Question:
    where = f"{path}: line {number}"
    if not isinstance(record, dict):
        raise ConfigError(f"{where} is a JSON {type(record).__name__}, not an object with "
                          f"'question', 'options' and 'answer'")
    missing = [key for key in ("question", "options", "answer") if key not in record]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(repr(k) for k in missing)}; each line "
                          f"holds 'question', 'options' and 'answer'")
    question, options, context = record["question"], record["options"], record.get("context")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: 'question' is {excerpt(question)}; give the question text")
    if context is not None and not isinstance(context, str):
        raise ConfigError(f"{where}: 'context' is {excerpt(context)}; give text or leave it out")
    if isinstance(options, dict):
        keys, texts = [str(k) for k in options], list(options.values())
    elif isinstance(options, list):
        keys, texts = list(LETTERS[:len(options)]), options
    else:
        raise ConfigError(f"{where}: 'options' is {excerpt(options)}; give a list of option "
                          f"texts or a mapping of letters to them")
    if not 2 <= len(texts) <= len(LETTERS):
        raise ConfigError(f"{where}: {len(texts)} options; a question needs 2 to "
                          f"{len(LETTERS)}")
    bad = [keys[i] for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ConfigError(f"{where}: option {', '.join(bad)} is not text (empty or not a string)")
    prompt = f"Question: {question.strip()}\nAnswer:"
    if context and context.strip():
        prompt = f"{context.strip()}\n{prompt}"
    return Question(prompt, tuple(t.strip() for t in texts),
                    _answer_index(path, number, record["answer"], keys), number)


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a JSONL file; a bad line is an error naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: question file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: byte {exc.start} is not ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the question file: {exc.strerror or exc}") from None
    questions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number} is not JSON ({exc.msg}); a question "
                              f"file holds one JSON object a line") from None
        questions.append(_question(path, number, record))
    if not questions:
        raise ConfigError(f"{path}: holds no questions (empty, or only blank lines)")
    return questions


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as the harness makes them: the pair is tokenised whole
    (a word split across the boundary tokenises as it would in running text) and the
    continuation is what follows the context's own tokens; trailing spaces of the context move
    to the continuation."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return list(whole[:len(context_ids)]), list(whole[len(context_ids):])


def continuation_logprob(logits: np.ndarray, tokens: Sequence[int], count: int) -> float:
    """Summed log-probability (float64) of the last ``count`` of ``tokens``, given logits
    [len(tokens) - 1 or more, vocab] where row i predicts token i + 1 of ``tokens``."""
    rows = np.asarray(logits[len(tokens) - 1 - count:len(tokens) - 1], dtype=np.float64)
    peak = rows.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
    picked = rows[np.arange(count), np.asarray(tokens[-count:])]
    return float((picked - log_norm).sum())


def score_questions(questions: Sequence[Question], tokenizer: Any,
                    loglikelihood: LogLikelihood) -> McqResult:
    """acc, acc_norm and acc_bytes over ``questions`` (ties go to the first option, as numpy's
    argmax in the harness)."""
    if not questions:
        raise ConfigError("no questions to score")
    lls, hits = [], np.zeros(3)
    for question in questions:
        scores = []
        for option in question.options:
            context_ids, continuation_ids = encode_pair(tokenizer, question.prompt,
                                                        DELIMITER + option)
            scores.append(loglikelihood(context_ids, continuation_ids))
        values = np.asarray(scores, dtype=np.float64)
        chars = np.asarray([len(o) for o in question.options], dtype=np.float64)
        nbytes = np.asarray([len(o.encode()) for o in question.options], dtype=np.float64)
        picks = (np.argmax(values), np.argmax(values / chars), np.argmax(values / nbytes))
        hits += [pick == question.answer for pick in picks]
        lls.append(tuple(scores))
    acc, acc_norm, acc_bytes = (hits / len(questions)).tolist()
    return McqResult(len(questions), acc, acc_norm, acc_bytes, tuple(lls))
