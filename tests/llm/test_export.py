"""export_genai on tiny Llama/Qwen2/Gemma decoders, pruned in the tests themselves with torch:
the real model builder, real onnxruntime and onnxruntime-genai sessions, no mocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from hwnas.errors import ExportError
from hwnas.llm.export import LayerPlan, PrecisionPlan, Weight, export_genai
from hwnas.llm.slicing import slice_attention, slice_mlp
from hwnas.testing.llm import tiny_config, tiny_tokenizer

PROMPT = [5, 17, 99, 250, 3, 77, 8, 301]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


def tiny_model(family: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()


def ort_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Prefill logits from onnxruntime, past length 0, inputs named as genai_config says."""
    import onnxruntime as ort

    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(folder / decoder["filename"]),
                                   providers=["CPUExecutionProvider"])
    tokens = np.array([ids], dtype=np.int64)
    names = decoder["inputs"]
    feed = {names["input_ids"]: tokens, names["attention_mask"]: np.ones_like(tokens)}
    empty = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), np.float32)
    for layer in range(decoder["num_hidden_layers"]):
        feed[names["past_key_names"] % layer] = empty
        feed[names["past_value_names"] % layer] = empty
    return session.run([decoder["outputs"]["logits"]], feed)[0][0]


def torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def torch_greedy(model: Any, ids: list[int], count: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=count, min_new_tokens=count, do_sample=False)
    return out[0, len(ids):].tolist()


def genai_greedy(folder: Path, ids: list[int], count: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + count, min_length=len(ids) + count)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return list(generator.get_sequence(0))[len(ids):]


def assert_matches_torch(model: Any, folder: Path, atol: float = 1e-4) -> None:
    difference = np.abs(ort_logits(folder, PROMPT) - torch_logits(model, PROMPT)).max()
    assert difference < atol, f"max |logit difference| {difference}"
    assert genai_greedy(folder, PROMPT, NEW_TOKENS) == torch_greedy(model, PROMPT, NEW_TOKENS)


def keep_kv_groups(layer: Any, groups: list[int], heads_per_group: int, head_dim: int) -> None:
    """Drop whole key/value groups (hwnas.llm.slicing's cut, every query head of a kept group
    kept)."""
    slice_attention(layer, torch.tensor(groups), [torch.arange(heads_per_group)] * len(groups),
                    head_dim, heads_per_group)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_fp32_export_matches_torch_and_generates_alike(family: str, tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model(family)
    done = export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))
    assert_matches_torch(model, done.path)
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= set(done.files)
    assert set(done.applied.values()) == {"fp32"} and len(done.applied) == 4 * 5 + 2
    assert done.total_bytes == sum(p.stat().st_size for p in done.path.iterdir())
    assert done.versions["onnxruntime-genai"] and len(done.files["model.onnx"]) == 64


def test_uneven_mlp_widths_export_and_match(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("qwen2", seed=1)  # Qwen2: q/k/v biases and tied embeddings as well
    generator = torch.Generator().manual_seed(0)
    for index, kept in ((0, 96), (2, 64)):
        kept_units = torch.randperm(128, generator=generator)[:kept].sort().values
        slice_mlp(model.model.layers[index], kept_units)
    done = export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))
    assert_matches_torch(model, done.path)
    graph = onnx.load(str(done.path / "model.onnx"), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in graph.graph.initializer}
    downs = [next(dims for name, dims in shapes.items() if f"layers.{i}.mlp.down_proj" in name)
             for i in range(4)]
    assert [dims[0] for dims in downs] == [96, 128, 64, 128]
    # the builder's shapes follow each layer's width (its one intermediate_size is patched)
    shapes = {v.name: v.type.tensor_type.shape.dim for v in graph.graph.value_info}
    widths = [shapes[f"/model/layers.{i}/mlp/Mul/output_0"][-1].dim_value for i in range(4)]
    assert widths == [96, 128, 64, 128]


def test_uniform_head_reduction_exports_and_matches(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("llama", seed=2)
    for layer in model.model.layers:
        keep_kv_groups(layer, [1], heads_per_group=2, head_dim=16)
    model.config.num_attention_heads, model.config.num_key_value_heads = 2, 1
    done = export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))
    assert_matches_torch(model, done.path)
    decoder = json.loads((done.path / "genai_config.json").read_text())["model"]["decoder"]
    heads = (decoder["num_attention_heads"], decoder["num_key_value_heads"], decoder["head_size"])
    assert heads == (2, 1, 16)


def test_dropped_decoder_layer_exports_and_matches(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("gemma", seed=3)
    layers = [layer for index, layer in enumerate(model.model.layers) if index != 2]
    model.model.layers = torch.nn.ModuleList(layers)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index  # the cache slot each attention writes
    model.config.num_hidden_layers = 3
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:3]
    done = export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))
    assert_matches_torch(model, done.path)
    decoder = json.loads((done.path / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["num_hidden_layers"] == 3


def quantized_nodes(folder: Path) -> dict[str, tuple[int, int]]:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    found = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            found[node.name] = (attributes["bits"], attributes["block_size"])
    return found


def test_mixed_precision_per_layer(tokenizer: Any, tmp_path: Path) -> None:
    # hidden 128, MLP 256: block 128 divides every matmul's input dimension
    model = tiny_model("llama", seed=4, hidden_size=128, intermediate_size=256, head_dim=32)
    int4, int8 = Weight("int4", 32), Weight("int8", 128)
    plan = PrecisionPlan(default=LayerPlan(int8, int8),
                         layers={0: LayerPlan(int4, int4), 1: LayerPlan(int4, int4)},
                         embedding=Weight("fp32"), lm_head=Weight("int8", 128))
    mixed = export_genai(model, tokenizer, tmp_path / "mixed", plan)
    all4 = export_genai(model, tokenizer, tmp_path / "int4", PrecisionPlan.uniform("int4", 32))
    all8 = export_genai(model, tokenizer, tmp_path / "int8", PrecisionPlan.uniform("int8", 128))

    expected = {"/lm_head/MatMul_Q8": (8, 128)}
    for layer in range(4):
        bits = (4, 32) if layer < 2 else (8, 128)
        for matmul in ("attn/qkv_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj"):
            expected[f"/model/layers.{layer}/{matmul}/MatMul_Q{bits[0]}"] = bits
    assert quantized_nodes(mixed.path) == expected
    assert mixed.applied["/model/embed_tokens/Gather"] == "fp32"
    assert mixed.applied["/model/layers.1/mlp/down_proj/MatMul"] == "int4/32"
    assert mixed.applied["/model/layers.3/attn/qkv_proj/MatMul"] == "int8/128"

    reference = torch_logits(model, PROMPT)
    error = {name: float(np.abs(ort_logits(done.path, PROMPT) - reference).max())
             for name, done in (("mixed", mixed), ("int4", all4), ("int8", all8))}
    assert error["int8"] < error["mixed"] < error["int4"], error
    assert all4.total_bytes < mixed.total_bytes < all8.total_bytes
    assert len(genai_greedy(mixed.path, PROMPT, NEW_TOKENS)) == NEW_TOKENS


def test_fp16_weights_are_stored_half_and_computed_close(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("llama", seed=5)
    full = export_genai(model, tokenizer, tmp_path / "fp32", PrecisionPlan.uniform("fp32"))
    half = export_genai(model, tokenizer, tmp_path / "fp16", PrecisionPlan.uniform("fp16", embedding="fp16"))
    assert set(half.applied.values()) == {"fp16"}
    assert half.files["model.onnx.data"] != full.files["model.onnx.data"]
    data_bytes = [(done.path / "model.onnx.data").stat().st_size for done in (half, full)]
    assert data_bytes[0] < 0.6 * data_bytes[1]
    assert np.abs(ort_logits(half.path, PROMPT) - torch_logits(model, PROMPT)).max() < 1e-2
    assert len(genai_greedy(half.path, PROMPT, NEW_TOKENS)) == NEW_TOKENS


def test_uneven_heads_are_refused_before_building(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("llama")
    keep_kv_groups(model.model.layers[1], [0], heads_per_group=2, head_dim=16)
    with pytest.raises(ExportError, match=r"layer 1: 2 query / 1 key-value heads"):
        export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("int4"))
    assert not (tmp_path / "genai").exists()


def test_unsupported_architecture_is_refused_by_name(tokenizer: Any, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512))
    with pytest.raises(ExportError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))
    assert not (tmp_path / "genai").exists()


@pytest.mark.parametrize("plan, message", [
    (lambda: PrecisionPlan.uniform("int4").with_layers([7], mlp=Weight("int8", 64)), r"layers \[7\]"),
    (lambda: PrecisionPlan.uniform("int4", embedding="int8"), "GatherBlockQuantized is 4-bit only"),
    (lambda: PrecisionPlan.uniform("int4", block_size=48), "block size 48"),
    (lambda: PrecisionPlan.uniform("int3"), "'int3' is not one of"),
])
def test_impossible_plans_are_refused(plan: Any, message: str, tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=message):
        export_genai(tiny_model("llama"), tokenizer, tmp_path / "genai", plan())
    assert not (tmp_path / "genai").exists()


def test_layer_count_must_agree_with_the_config(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("llama")
    del model.model.layers[3]
    with pytest.raises(ExportError, match="3 decoder layers but config.num_hidden_layers is 4"):
        export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("fp32"))


def test_tied_embedding_and_lm_head_take_their_own_precisions(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("qwen2", seed=6)  # tie_word_embeddings: the builder shares one tensor
    plan = PrecisionPlan.uniform("fp32")
    plan = PrecisionPlan(plan.default, {}, embedding=Weight("int4", 32), lm_head=Weight("int8", 64))
    done = export_genai(model, tokenizer, tmp_path / "genai", plan)
    assert done.applied["/model/embed_tokens/Gather"] == "int4/32"
    assert done.applied["/lm_head/MatMul"] == "int8/64"
    graph = onnx.load(str(done.path / "model.onnx"), load_external_data=False).graph
    float_tables = [t.name for t in graph.initializer
                    if sorted(t.dims) == [64, 512] and t.data_type == onnx.TensorProto.FLOAT]
    assert float_tables == []  # the fp32 vocabulary table is gone, not kept beside the copies
    assert np.abs(ort_logits(done.path, PROMPT) - torch_logits(model, PROMPT)).max() < 0.1
    assert len(genai_greedy(done.path, PROMPT, NEW_TOKENS)) == NEW_TOKENS


def test_a_folder_that_is_not_an_earlier_export_is_left_alone(tokenizer: Any, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_genai(tiny_model("llama"), tokenizer, tmp_path, PrecisionPlan.uniform("fp32"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    again = export_genai(tiny_model("llama"), tokenizer, tmp_path / "genai", PrecisionPlan.uniform("int4"))
    again = export_genai(tiny_model("llama"), tokenizer, again.path, PrecisionPlan.uniform("fp32"),
                         threads=1)
    assert set(again.applied.values()) == {"fp32"}  # an earlier export is replaced whole
    decoder = json.loads((again.path / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["session_options"]["intra_op_num_threads"] == 1
    assert len(genai_greedy(again.path, PROMPT, 2)) == 2


def test_tied_int4_embedding_shares_the_lm_head_weight(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("gemma", seed=7)  # tied, and Gemma scales the embedding by sqrt(hidden)
    done = export_genai(model, tokenizer, tmp_path / "genai",
                        PrecisionPlan.uniform("int4", 32, embedding="int4"))
    assert done.applied["/model/embed_tokens/Gather"] == "int4/32" == done.applied["/lm_head/MatMul"]
    graph = onnx.load(str(done.path / "model.onnx"), load_external_data=False).graph
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.name == "/lm_head/MatMul_Q4")
    reshape = next(n for n in graph.node if n.output[0] == lookup.input[0])
    assert reshape.input[0] == head.input[1] and lookup.input[2] == head.input[2]  # one table
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                and sorted(t.dims) == [64, 512]]
    assert np.abs(ort_logits(done.path, PROMPT) - torch_logits(model, PROMPT)).max() < 0.2
    assert len(genai_greedy(done.path, PROMPT, NEW_TOKENS)) == NEW_TOKENS


def test_tied_fp16_embedding_shares_the_lm_head_weight(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("qwen2", seed=8)
    done = export_genai(model, tokenizer, tmp_path / "genai",
                        PrecisionPlan.uniform("fp16", embedding="fp16"))
    assert set(done.applied.values()) == {"fp16"}
    graph = onnx.load(str(done.path / "model.onnx"), load_external_data=False).graph
    tables = [t for t in graph.initializer if sorted(t.dims) == [64, 512]]
    assert [t.data_type for t in tables] == [onnx.TensorProto.FLOAT16]  # one table, half
    assert np.abs(ort_logits(done.path, PROMPT) - torch_logits(model, PROMPT)).max() < 1e-2
    assert genai_greedy(done.path, PROMPT, NEW_TOKENS) == torch_greedy(model, PROMPT, NEW_TOKENS)


def test_a_block_larger_than_the_input_dimension_is_zero_padded(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_model("llama", seed=9)  # hidden 64: every qkv/gate/up/lm_head K is 64 < 128
    done = export_genai(model, tokenizer, tmp_path / "genai", PrecisionPlan.uniform("int8", 128))
    assert quantized_nodes(done.path)["/model/layers.0/attn/qkv_proj/MatMul_Q8"] == (8, 128)
    assert np.abs(ort_logits(done.path, PROMPT) - torch_logits(model, PROMPT)).max() < 0.05
