"""Tiny causal language models for tests, generated here (nothing is downloaded).

A byte-level BPE tokenizer trained in a fraction of a second on Python's own ``pydoc_data``
topics, and randomly initialised decoders of each family hwnas supports (Llama, Qwen2, Gemma),
saved as Hugging Face folders (config.json + model.safetensors + tokenizer.json), the form a user
brings. ``tiny_genai_folder`` runs onnxruntime-genai's model builder on such a folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

VOCAB_SIZE = 512
FAMILIES = ("llama", "qwen2", "gemma")
END_OF_TEXT = "<|endoftext|>"


def demo_text() -> list[str]:
    """The pydoc topics (the Python reference's prose): text that ships with every Python."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def tiny_tokenizer() -> Any:
    """A transformers fast tokenizer with a 512-token byte-level BPE vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(demo_text(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def tiny_config(family: str = "llama", **overrides: Any) -> Any:
    """A transformers config of ``family``: 4 layers, hidden 64, MLP 128, 4 query heads in 2
    key/value groups (grouped-query attention), head size 16."""
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    config_type = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig}[family]
    settings: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=family != "llama")
    settings.update(overrides)
    return config_type(**settings)


def tiny_causal_lm(folder: Path, family: str = "llama", seed: int = 0, **overrides: Any) -> Path:
    """A randomly initialised ``family`` decoder saved as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_genai_folder(hf_folder: Path, out: Path, precision: str = "int4") -> Path:
    """onnxruntime-genai's model builder, as its command line runs it, on ``hf_folder``."""
    out = Path(out)
    done = subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder),
         "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder-cache"),
         "--extra_options", "hf_remote=false"],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the model builder failed on {hf_folder}:\n{done.stderr[-2000:]}")
    return out
