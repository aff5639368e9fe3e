"""A language-model candidate's zero-cost hints (hwnas/llm/proxies.py): what the engine orders
its first proposals by. Each must move the way accuracy does when one knob moves."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hwnas.llm.draft import LlmDraft  # noqa: E402
from hwnas.llm.proxies import LlmProxies, relative_error  # noqa: E402
from hwnas.llm.saliency import measure_saliency  # noqa: E402
from hwnas.testing.llm import tiny_config  # noqa: E402


def test_quantisation_error_grows_as_precision_drops():
    weight = torch.randn(48, 100, generator=torch.Generator().manual_seed(0))  # 100: a padded block
    errors = [relative_error(weight, label)
              for label in ("fp32", "fp16", "int8/32", "int4/32", "int4/64", "int4/128")]
    assert errors[0] == 0.0 and errors == sorted(errors) and errors[1] < 1e-6 < errors[2]
    assert 1e-3 < errors[3] < 0.05  # int4 (7 levels a side) keeps ~1% of the energy as error
    # a block that holds one outlier quantises everything else in it coarsely
    outlier = weight.clone()
    outlier[:, 5] *= 50
    assert relative_error(outlier[:, :32], "int4/32") > relative_error(weight[:, :32], "int4/32")


def test_each_proxy_moves_with_its_knob():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    saliency = measure_saliency(model, torch.randint(1, 512, (4, 32),
                                                     generator=torch.Generator().manual_seed(1)))
    proxies = LlmProxies(model, saliency)
    layers = model.config.num_hidden_layers

    def draft(bits: str = "int4/32", head: str = "int4/32", units: int | None = None,
              drop: tuple[int, ...] = ()) -> LlmDraft:
        found = LlmDraft.neutral(model.config)
        found.bits = {i: bits for i in range(layers)}
        found.embedding, found.lm_head, found.drop_layers = "int4/32", head, set(drop)
        if units is not None:
            found.mlp_units = [units] * layers
        return found

    base = proxies.of(draft())
    finer, coarser = proxies.of(draft("int8/32")), proxies.of(draft("int4/128"))
    assert coarser["quantisation_noise"] < base["quantisation_noise"] < finer["quantisation_noise"]
    assert proxies.of(draft(head="int8/32"))["quantisation_noise"] > base["quantisation_noise"]
    assert base["structure_kept"] == pytest.approx(1.0)
    cut = proxies.of(draft(units=model.config.intermediate_size // 2))
    dropped = proxies.of(draft(drop=(1,)))
    assert cut["structure_kept"] < 1.0 and dropped["structure_kept"] < 1.0
    assert cut["quantisation_noise"] == base["quantisation_noise"]  # the precision is unchanged
    # the kept units are the most salient: half of them hold more than half the saliency
    assert cut["structure_kept"] > 0.5
