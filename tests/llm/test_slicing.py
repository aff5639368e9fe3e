"""Saliency and slicing on tiny decoders of each family: a cut equals zeroing what it removes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hwnas.errors import ExportError  # noqa: E402
from hwnas.llm.saliency import measure_saliency  # noqa: E402
from hwnas.llm.slicing import SlicePlan, slice_model  # noqa: E402
from hwnas.testing.llm import FAMILIES, tiny_config  # noqa: E402


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    return model


def blocks(count: int = 6, length: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 512, (count, length), generator=generator)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_a_neutral_plan_changes_nothing(family: str) -> None:
    model = tiny_model(family)
    saliency = measure_saliency(model, blocks())
    same = slice_model(model, SlicePlan.neutral(model.config), saliency)
    assert torch.equal(logits(same, blocks(1)), logits(model, blocks(1)))


@pytest.mark.parametrize("family", FAMILIES)
def test_cutting_units_and_heads_equals_zeroing_them(family: str) -> None:
    """Removing MLP units, a key/value group and a query head per group gives the logits of
    the unpruned model with exactly those units' and heads' output columns zeroed."""
    model = tiny_model(family)
    saliency = measure_saliency(model, blocks())
    plan = SlicePlan(mlp_units=(96, 128, 64, 112), kv_groups=1, heads_per_group=1)
    pruned = slice_model(model, plan, saliency)

    zeroed = tiny_model(family)
    head_dim = 16
    for index, (layer, kept_layer) in enumerate(zip(zeroed.model.layers, pruned.model.layers)):
        keep_units = torch.topk(saliency.mlp[index], plan.mlp_units[index]).indices
        drop_units = sorted(set(range(128)) - set(keep_units.tolist()))
        layer.mlp.down_proj.weight.data[:, drop_units] = 0.0
        group = int(torch.argmax(saliency.kv_groups[index]))
        heads = saliency.heads[index].reshape(2, 2)[group]
        kept_head = group * 2 + int(torch.argmax(heads))
        for head in range(4):
            if head != kept_head:
                layer.self_attn.o_proj.weight.data[:, head * head_dim:(head + 1) * head_dim] = 0.0
        assert kept_layer.mlp.down_proj.in_features == plan.mlp_units[index]
    assert pruned.config.num_attention_heads == 1 and pruned.config.num_key_value_heads == 1
    assert pruned.config.hwnas_intermediate_sizes == [96, 128, 64, 112]
    ids = blocks(2)
    assert torch.allclose(logits(pruned, ids), logits(zeroed, ids), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_layers_leave_a_model_that_generates_with_its_cache(family: str) -> None:
    model = tiny_model(family)
    saliency = measure_saliency(model, blocks())
    plan = SlicePlan((128,) * 4, 2, 2, drop_layers=(1, 2))
    pruned = slice_model(model, plan, saliency)
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    # greedy decoding with the key/value cache equals recomputing the whole sequence each step
    prompt = blocks(1, 8)
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True,
                                 pad_token_id=0)
        plain = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False,
                                pad_token_id=0)
    assert torch.equal(cached, plain)
    # and the survivors compute what they did: layers 0 and 3 of the original, in order
    manual = tiny_model(family)
    manual.model.layers = torch.nn.ModuleList([manual.model.layers[0], manual.model.layers[3]])
    manual.model.layers[1].self_attn.layer_idx = 1
    manual.config.num_hidden_layers = 2
    if getattr(manual.config, "layer_types", None) is not None:
        manual.config.layer_types = manual.config.layer_types[:2]
    assert torch.allclose(logits(pruned, prompt), logits(manual, prompt), atol=1e-6)


def test_saliency_ranks_what_the_data_does_not_use_last() -> None:
    model = tiny_model("llama")
    # unit 5 of layer 0 never reaches the output, and layer 2 leaves the residual stream as is
    model.model.layers[0].mlp.down_proj.weight.data[:, 5] = 0.0
    layer = model.model.layers[2]
    layer.mlp.down_proj.weight.data.zero_()
    layer.self_attn.o_proj.weight.data.zero_()
    saliency = measure_saliency(model, blocks())
    assert int(torch.argmin(saliency.mlp[0])) == 5
    assert saliency.block_influence[2] == pytest.approx(0.0, abs=1e-9)
    assert saliency.layer_drop_order()[0] == 2
    assert 0 not in saliency.layer_drop_order() and 3 not in saliency.layer_drop_order()
    assert saliency.tokens == 6 * 32


def test_a_plan_the_model_cannot_give_is_refused() -> None:
    model = tiny_model("llama")
    saliency = measure_saliency(model, blocks(2))
    with pytest.raises(ExportError, match="1 to 2 possible"):
        slice_model(model, SlicePlan((128,) * 4, 3, 2), saliency)
    with pytest.raises(ExportError, match="MLP widths for 3 layers"):
        slice_model(model, SlicePlan((128,) * 3, 2, 2), saliency)
    with pytest.raises(ExportError, match="every decoder layer"):
        slice_model(model, SlicePlan((128,) * 4, 2, 2, drop_layers=(0, 1, 2, 3)), saliency)
