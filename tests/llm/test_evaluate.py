"""Evaluation of an exported onnxruntime-genai folder, by a real onnxruntime session on folders
the real model builder wrote from a tiny Llama: the same perplexity as the torch model it came
from, the bytes named by sha256, multiple-choice questions scored right, and one clear error
for a folder whose logits are of the last position only."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwnas.errors import ExportError
from hwnas.llm.evaluate import (OnnxDecoder, evaluate_folder, perplexity_onnx,
                                perplexity_torch, read_decoder_spec, torch_loglikelihood)
from hwnas.llm.mcq import encode_pair, read_questions, score_questions
from hwnas.llm.text import language_data
from hwnas.config.text import LanguageDataSpec, TokenBudgets
from hwnas.testing.llm import tiny_causal_lm, tiny_genai_folder

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny Llama, exported once per module as fp32 and int4. Its weights are drawn wider
    than the default (initializer_range 0.2) so its predictions are far from uniform: reading
    the wrong bytes, or the wrong position's logits, then moves perplexity a long way."""
    root = tmp_path_factory.mktemp("llm")
    hf = tiny_causal_lm(root / "hf", initializer_range=0.2)
    return {"hf": hf, "fp32": tiny_genai_folder(hf, root / "fp32", "fp32"),
            "int4": tiny_genai_folder(hf, root / "int4", "int4"), "root": root}


@pytest.fixture(scope="module")
def model(built: dict[str, Path]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(built["hf"]).eval()


@pytest.fixture(scope="module")
def tokenizer(built: dict[str, Path]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built["hf"])


@pytest.fixture(scope="module")
def blocks(tokenizer) -> np.ndarray:
    spec = LanguageDataSpec(sequence_length=64, tokens=TokenBudgets(
        calibration=0, saliency=0, healing=0, selection=0, evaluation=512))
    return language_data(spec, tokenizer).evaluation


def test_the_exported_fp32_folder_has_the_torch_models_perplexity(built, model, blocks) -> None:
    torch_side = perplexity_torch(model, blocks)
    exported = perplexity_onnx(built["fp32"], blocks, threads=1, batch_size=3)
    assert exported.tokens == torch_side.tokens == 8 * 63 and exported.blocks == 8
    assert exported.perplexity == pytest.approx(torch_side.perplexity, rel=1e-3)
    assert exported.mean_nll == pytest.approx(torch_side.mean_nll, rel=1e-4)
    assert math.exp(exported.mean_nll) == pytest.approx(exported.perplexity)
    # far from uniform (512 tokens): a model that read zeros would not land within the
    # tolerance above; and the logits agree position by position, not just on average
    assert abs(math.log(torch_side.perplexity) - math.log(512)) > 0.5
    import torch

    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(blocks[:2])).logits.numpy()
    np.testing.assert_allclose(OnnxDecoder(built["fp32"]).logits(blocks[:2]), expected,
                               rtol=1e-3, atol=1e-3)
    # and the arithmetic is transformers' own: its loss is the mean NLL of tokens 1.. a block
    with torch.no_grad():
        losses = [float(model(input_ids=torch.from_numpy(block[None]),
                              labels=torch.from_numpy(block[None])).loss) for block in blocks]
    assert torch_side.mean_nll == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_the_int4_folder_is_close_but_not_the_same(built, blocks) -> None:
    fp32 = perplexity_onnx(built["fp32"], blocks)
    int4 = perplexity_onnx(built["int4"], blocks)
    assert math.isfinite(int4.perplexity) and int4.perplexity != fp32.perplexity
    assert int4.perplexity == pytest.approx(fp32.perplexity, rel=0.25)


def test_the_evaluation_names_the_bytes_it_read(built, blocks) -> None:
    result = evaluate_folder(built["fp32"], blocks, threads=2)
    folder = built["fp32"]
    assert result.files == {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                            for name in ("model.onnx", "model.onnx.data")}
    assert result.mcq is None and result.threads == 2
    assert result.lines()[0].startswith(f"{folder}: perplexity ")


def test_the_decoder_is_found_through_genai_config(built, tmp_path: Path) -> None:
    spec = read_decoder_spec(built["fp32"])
    config = json.loads((built["fp32"] / "genai_config.json").read_text())["model"]["decoder"]
    assert (spec.onnx.name, spec.layers, spec.kv_heads, spec.head_size) == (
        config["filename"], 4, 2, 16)
    assert spec.past_key == "past_key_values.%d.key" and spec.logits == "logits"
    # a renamed decoder file is followed, not assumed to be model.onnx
    moved = tmp_path / "moved"
    shutil.copytree(built["fp32"], moved)
    (moved / "model.onnx").rename(moved / "decoder.onnx")
    with pytest.raises(ExportError, match="names decoder file model.onnx, which is not in"):
        read_decoder_spec(moved)
    config_path = moved / "genai_config.json"
    config_path.write_text(config_path.read_text().replace('"model.onnx"', '"decoder.onnx"'))
    assert OnnxDecoder(moved).logits(np.array([[1, 2, 3]])).shape == (1, 3, 512)
    with pytest.raises(ExportError, match="no genai_config.json"):
        read_decoder_spec(tmp_path)
    config_path.write_text('{"model": {"decoder": {}}}')
    with pytest.raises(ExportError, match="genai_config.json: lacks model.decoder's "):
        read_decoder_spec(moved)


def test_blocks_longer_than_the_folders_context_are_refused(built) -> None:
    # the tiny models' context is 512 tokens (max_position_embeddings)
    with pytest.raises(ExportError, match="blocks of 520 tokens are longer than the folder's "
                                          "context_length 512; lower dataset.sequence_length"):
        perplexity_onnx(built["fp32"], np.ones((1, 520), dtype=np.int64))


def test_a_folder_with_last_position_logits_only_is_refused(built) -> None:
    """The builder's prune_lm_head=true computes the last position's logits alone."""
    out = built["root"] / "pruned"
    done = subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(built["hf"]),
         "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(built["root"] / "cache"),
         "--extra_options", "hf_remote=false", "prune_lm_head=true"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(ExportError, match=r"logits have shape \[1, 1, 512\] for input \[1, 8\]"
                                          r"; perplexity needs the logits of every position"):
        OnnxDecoder(out).logits(np.arange(8)[None])


def answer_of(model, tokenizer, prompt: str, count: int) -> str | None:
    """The torch model's greedy continuation of ``prompt`` as option text, over tokens that
    are whole printable ASCII (a random model would pick half a UTF-8 character), the first a
    word after a space (the harness puts a space between prompt and option); None where the
    text does not tokenise back to the same tokens after the prompt."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    shown = {t: tokenizer.decode([t]) for t in range(len(tokenizer))
             if t not in tokenizer.all_special_ids}
    clean = [t for t, text in shown.items() if text.isascii() and text.strip().isprintable()
             and text.strip() and text.lstrip(" ") == text.strip()]
    words = [t for t in clean if shown[t][:1] == " " and shown[t][1:2].isalpha()]
    tokens: list[int] = []
    with torch.no_grad():
        for step in range(count):
            logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, -1]
            tokens.append(max(words if step == 0 else clean, key=lambda t: float(logits[t])))
    text = tokenizer.decode(tokens)
    if text[1:] != text[1:].strip() or encode_pair(tokenizer, prompt, text)[1] != tokens:
        return None
    return text[1:]


def test_the_folder_picks_the_option_the_model_makes_likely(built, model, tokenizer,
                                                            tmp_path: Path) -> None:
    """The right option is the torch model's own greedy continuation of the question; the
    wrong ones are random tokens. The exported folder must score the right one highest, and
    every option's log-likelihood as the torch model does."""
    from hwnas.llm.text import builtin_splits

    rng = np.random.default_rng(0)
    lines = []
    for document in builtin_splits()["test"].documents:
        question = " ".join(document.split()[:12])
        right = answer_of(model, tokenizer, f"Question: {question}\nAnswer:", 6)
        if right is None:
            continue
        wrong = [tokenizer.decode(rng.integers(1, 512, size=6).tolist()).strip() or "x"
                 for _ in range(3)]
        answer = len(lines) % 4
        options = wrong[:answer] + [right] + wrong[answer:]
        lines.append(json.dumps({"question": question, "options": options, "answer": answer}))
        if len(lines) == 6:
            break
    assert len(lines) == 6
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    questions = read_questions(tmp_path / "q.jsonl")
    torch_side = score_questions(questions, tokenizer, torch_loglikelihood(model))
    result = evaluate_folder(built["fp32"], np.asarray([[1, 2, 3]]), questions,
                             tokenizer=tokenizer)
    assert result.mcq is not None and result.mcq.questions == 6
    assert result.mcq.acc == 1.0 and torch_side.acc == 1.0
    np.testing.assert_allclose(result.mcq.loglikelihoods, torch_side.loglikelihoods,
                               rtol=1e-4, atol=1e-3)
    assert (result.mcq.acc_norm, result.mcq.acc_bytes) == (torch_side.acc_norm,
                                                           torch_side.acc_bytes)
    # the folder's own tokenizer (the builder's copy) is the default and agrees
    assert evaluate_folder(built["fp32"], np.asarray([[1, 2, 3]]), questions).mcq == result.mcq


@pytest.mark.parametrize("family", ["qwen2", "gemma"])
def test_every_family_reads_back_its_torch_perplexity(family: str, tmp_path: Path) -> None:
    """Qwen2 (attention biases) and Gemma (tied, scaled embeddings) export differently from
    Llama; the folder's perplexity is still the torch model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = tiny_causal_lm(tmp_path / "hf", family=family, initializer_range=0.2)
    folder = tiny_genai_folder(hf, tmp_path / "fp32", "fp32")
    spec = LanguageDataSpec(sequence_length=64, tokens=TokenBudgets(
        calibration=0, saliency=0, healing=0, selection=0, evaluation=256))
    blocks = language_data(spec, AutoTokenizer.from_pretrained(hf)).evaluation
    torch_side = perplexity_torch(AutoModelForCausalLM.from_pretrained(hf).eval(), blocks)
    assert perplexity_onnx(folder, blocks).perplexity == pytest.approx(torch_side.perplexity,
                                                                       rel=1e-3)
