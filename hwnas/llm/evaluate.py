"""Perplexity and multiple-choice accuracy of an EXPORTED onnxruntime-genai folder.

What a search ranks must be what ships, so this reads the folder's bytes: genai_config.json
names the decoder's ONNX file and its input/output names; a plain onnxruntime
InferenceSession runs it over whole blocks with an empty KV cache (past length 0) and the
logits of every position give each token's negative log-likelihood, in float64. The PyTorch
side (``perplexity_torch``) does the same arithmetic on a transformers model, for saliency,
healing, and to check an export against its source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.errors import ExportError
from hwnas.llm.mcq import McqResult, Question, continuation_logprob, score_questions

# onnxruntime's type strings -> numpy, for the inputs a genai decoder may declare
NUMPY_OF = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
            "tensor(float16)": np.float16}


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """What genai_config.json says about the decoder: its file and its names."""

    onnx: Path
    input_ids: str
    attention_mask: str
    position_ids: str | None
    past_key: str  # e.g. past_key_values.%d.key
    past_value: str
    logits: str
    layers: int
    kv_heads: int
    head_size: int
    context_length: int


def read_decoder_spec(folder: str | Path) -> DecoderSpec:
    folder = Path(folder)
    path = folder / "genai_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{folder}: no genai_config.json; not an onnxruntime-genai model "
                          f"folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read it as JSON: {exc}") from None
    try:
        model = config["model"]
        decoder = model["decoder"]
        inputs, outputs = decoder["inputs"], decoder["outputs"]
        spec = DecoderSpec(
            onnx=folder / decoder["filename"], input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"], position_ids=inputs.get("position_ids"),
            past_key=inputs["past_key_names"], past_value=inputs["past_value_names"],
            logits=outputs["logits"], layers=int(decoder["num_hidden_layers"]),
            kv_heads=int(decoder["num_key_value_heads"]), head_size=int(decoder["head_size"]),
            context_length=int(model["context_length"]))
    except (KeyError, TypeError) as exc:
        raise ExportError(f"{path}: lacks model.decoder's {exc} (the builder writes it); "
                          f"rebuild the folder") from None
    if not spec.onnx.is_file():
        raise ExportError(f"{path}: names decoder file {spec.onnx.name}, which is not in "
                          f"{folder}")
    return spec


def folder_sha256(spec: DecoderSpec) -> dict[str, str]:
    """sha256 of the decoder's files (the .onnx and its external data): the bytes evaluated."""
    files = [spec.onnx] + sorted(p for p in spec.onnx.parent.glob(spec.onnx.name + ".data*"))
    digests = {}
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        digests[path.name] = digest.hexdigest()
    return digests


class OnnxDecoder:
    """The folder's decoder in an onnxruntime session: logits of every position."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.spec = read_decoder_spec(folder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the builder's graphs warn about unused initialisers
        try:
            self.session = ort.InferenceSession(str(self.spec.onnx), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types; name the file
            raise ExportError(f"{self.spec.onnx}: onnxruntime cannot load it: {exc}") from None
        inputs = self.session.get_inputs()
        odd = [f"{i.name} ({i.type})" for i in inputs if i.type not in NUMPY_OF]
        if odd:  # numpy has no bfloat16 to feed such a cache with; say so, not a type error
            raise ExportError(f"{self.spec.onnx}: inputs of a type this evaluation cannot "
                              f"feed: {', '.join(odd)}; export with fp32, fp16 or int4 on cpu")
        self.types = {i.name: NUMPY_OF[i.type] for i in inputs}
        missing = [n for n in (self.spec.input_ids, self.spec.attention_mask,
                               self.spec.past_key % 0, self.spec.past_value % 0)
                   if n not in self.types]
        if missing or self.spec.logits not in {o.name for o in self.session.get_outputs()}:
            raise ExportError(f"{self.spec.onnx}: the graph lacks {missing or self.spec.logits} "
                              f"that genai_config.json names")

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 logits [batch, tokens, vocab] for int token ids [batch, tokens]."""
        ids = np.asarray(ids, dtype=np.int64)
        batch, length = ids.shape
        spec, types = self.spec, self.types
        feeds: dict[str, np.ndarray] = {
            spec.input_ids: ids.astype(types[spec.input_ids]),
            spec.attention_mask: np.ones((batch, length), dtype=types[spec.attention_mask])}
        if spec.position_ids is not None and spec.position_ids in types:
            feeds[spec.position_ids] = np.broadcast_to(
                np.arange(length), (batch, length)).astype(types[spec.position_ids])
        for layer in range(spec.layers):  # an empty cache: the whole block is the prompt
            for name in (spec.past_key % layer, spec.past_value % layer):
                feeds[name] = np.zeros((batch, spec.kv_heads, 0, spec.head_size),
                                       dtype=types[name])
        (logits,) = self.session.run([spec.logits], feeds)
        if logits.ndim != 3 or logits.shape[:2] != (batch, length):
            # prune_lm_head=true builds logits of the last position only: no perplexity then
            raise ExportError(
                f"{spec.onnx}: logits have shape {list(logits.shape)} for input "
                f"[{batch}, {length}]; perplexity needs the logits of every position. Was the "
                f"folder built with prune_lm_head=true? Rebuild without it")
        return logits

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        """The harness's loglikelihood: context cut from the left to the context length."""
        tokens = (context + continuation)[-(self.spec.context_length + 1):]
        logits = self.logits(np.asarray([tokens[:-1]]))
        return continuation_logprob(logits[0], tokens, len(continuation))


@dataclasses.dataclass(frozen=True)
class Perplexity:
    perplexity: float
    mean_nll: float  # nats per predicted token
    tokens: int  # predicted tokens: blocks * (sequence_length - 1)
    blocks: int
    seconds: float
    # the share of those tokens that are the most likely next token (greedy decoding's pick):
    # the quality a search maximises (hwnas/llm/search.py), with the perplexity beside it
    top1_accuracy: float = math.nan

    def line(self) -> str:
        return (f"perplexity {self.perplexity:.4f}, next-token accuracy "
                f"{self.top1_accuracy:.4f} ({self.tokens} predicted tokens in "
                f"{self.blocks} blocks, {self.seconds:.1f} s)")


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (float64) of tokens 1.. of each row of ``ids`` [batch, tokens]
    under ``logits`` [batch, tokens, vocab]; one row at a time keeps the float64 copy small."""
    out = np.empty((ids.shape[0], ids.shape[1] - 1), dtype=np.float64)
    for row in range(ids.shape[0]):
        scores = np.asarray(logits[row, :-1], dtype=np.float64)
        peak = scores.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(scores - peak).sum(axis=-1)) + peak[:, 0]
        out[row] = log_norm - scores[np.arange(ids.shape[1] - 1), ids[row, 1:]]
    return out


def _perplexity(logits_of: Any, blocks: np.ndarray, batch_size: int) -> Perplexity:
    blocks = np.asarray(blocks, dtype=np.int64)
    if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ExportError(f"perplexity needs blocks [count >= 1, length >= 2], got "
                          f"{list(blocks.shape)}")
    started, total, hits = time.perf_counter(), 0.0, 0
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        logits = logits_of(chunk)
        total += float(token_nll(logits, chunk).sum())
        hits += int((np.asarray(logits[:, :-1]).argmax(axis=-1) == chunk[:, 1:]).sum())
    count = blocks.shape[0] * (blocks.shape[1] - 1)
    mean = total / count
    return Perplexity(math.exp(mean), mean, count, blocks.shape[0], time.perf_counter() - started,
                      hits / count)


def perplexity_onnx(folder: str | Path | OnnxDecoder, blocks: np.ndarray,
                    threads: int | None = None, batch_size: int = 4) -> Perplexity:
    """exp(mean NLL) of the exported folder over ``blocks`` [count, sequence_length]."""
    decoder = folder if isinstance(folder, OnnxDecoder) else OnnxDecoder(folder, threads)
    length = np.shape(blocks)[-1]
    if length > decoder.spec.context_length:
        raise ExportError(f"{decoder.spec.onnx.parent}: blocks of {length} tokens are longer "
                          f"than the folder's context_length {decoder.spec.context_length}; "
                          f"lower dataset.sequence_length")
    return _perplexity(decoder.logits, blocks, batch_size)


def perplexity_torch(model: Any, blocks: np.ndarray, batch_size: int = 4) -> Perplexity:
    """The same figure for a transformers causal LM (eval mode, on its own device)."""
    import torch

    device = next(model.parameters()).device

    def logits_of(chunk: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            ids = torch.from_numpy(chunk).to(device)
            return model(input_ids=ids).logits.float().cpu().numpy()

    return _perplexity(logits_of, blocks, batch_size)


def torch_loglikelihood(model: Any) -> Any:
    """A transformers model as the ``loglikelihood`` that ``score_questions`` calls."""
    import torch

    device = next(model.parameters()).device

    def loglikelihood(context: list[int], continuation: list[int]) -> float:
        tokens = context + continuation
        with torch.no_grad():
            ids = torch.tensor([tokens[:-1]], device=device)
            logits = model(input_ids=ids).logits.float().cpu().numpy()
        return continuation_logprob(logits[0], tokens, len(continuation))

    return loglikelihood


@dataclasses.dataclass(frozen=True)
class LlmEvaluation:
    folder: str
    files: dict[str, str]  # decoder file -> sha256: the bytes these figures are of
    perplexity: Perplexity
    mcq: McqResult | None
    threads: int | None

    def lines(self) -> list[str]:
        out = [f"{self.folder}: {self.perplexity.line()}"]
        out += [f"  mcq {self.mcq.line()}"] if self.mcq is not None else []
        return out + [f"  {name} sha256 {sha}" for name, sha in self.files.items()]


def folder_tokenizer(folder: str | Path) -> Any:
    """The tokenizer the builder copied into the folder (tokenizer.json and its config)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def evaluate_folder(folder: str | Path, blocks: np.ndarray,
                    questions: Sequence[Question] | None = None, tokenizer: Any = None,
                    threads: int | None = None, batch_size: int = 4) -> LlmEvaluation:
    """Perplexity over ``blocks`` (LanguageData.evaluation) and, given questions, their
    accuracy; the tokenizer defaults to the folder's own."""
    decoder = OnnxDecoder(folder, threads)
    perplexity = perplexity_onnx(decoder, blocks, batch_size=batch_size)
    mcq = None
    if questions:
        tokenizer = tokenizer if tokenizer is not None else folder_tokenizer(folder)
        mcq = score_questions(questions, tokenizer, decoder.loglikelihood)
    return LlmEvaluation(str(folder), folder_sha256(decoder.spec), perplexity, mcq, threads)
