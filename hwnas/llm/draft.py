"""What a language-model candidate asks of the base model (hwnas/knobs/llm.py fills it in):
per original layer, MLP units kept and weight precision; key/value groups and query heads;
layers dropped; the embedding's and lm_head's precision. It becomes the slice plan and the
precision plan, and gives a lower bound of the exported folder's bytes without exporting."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from hwnas.llm.plan import PrecisionPlan, Weight
    from hwnas.llm.slicing import SlicePlan


def weight_of(label: str) -> "Weight":
    """``int4/32`` -> Weight("int4", 32); ``fp16`` -> Weight("fp16")."""
    from hwnas.llm.plan import Weight

    kind, _, block = label.partition("/")
    return Weight(kind, int(block) if block else 32)


def _bytes_per_weight(label: str) -> float:
    kind, _, block = label.partition("/")
    if kind in ("fp32", "fp16"):
        return 4.0 if kind == "fp32" else 2.0
    return (1.0 if kind == "int8" else 0.5) + 4.0 / int(block)


@dataclasses.dataclass
class LlmDraft:
    """What a candidate asks of the base model, filled in by each knob; indexed by the base
    model's (original) layers."""

    config: Any  # the base model's transformers config
    mlp_units: list[int]
    kv_groups: int
    heads_per_group: int
    drop_layers: set[int]
    bits: dict[int, str]  # original layer -> precision label
    embedding: str = "fp32"
    lm_head: str = "fp32"
    drop_order: tuple[int, ...] = ()  # layers, least influential first (saliency.py)

    @classmethod
    def neutral(cls, config: Any, drop_order: Sequence[int] = ()) -> "LlmDraft":
        return cls(config, [config.intermediate_size] * config.num_hidden_layers,
                   config.num_key_value_heads,
                   config.num_attention_heads // config.num_key_value_heads, set(),
                   {}, drop_order=tuple(drop_order))

    def weight_bytes(self) -> float:
        """A lower bound on the exported folder's bytes: every weight matrix at its planned
        precision (int blocks: packed values plus a float32 scale per block), the norms,
        the embedding and, where it differs from it, the lm_head. The folder holds more
        (its tokenizer, the graph; MatMulNBits pads a row to whole blocks): a candidate whose
        bound breaks a size budget cannot meet it."""
        config = self.config
        head_dim = getattr(config, "head_dim", None) or \
            config.hidden_size // config.num_attention_heads
        hidden = config.hidden_size
        query = self.kv_groups * self.heads_per_group * head_dim
        keys = self.kv_groups * head_dim
        total = 0.0
        kept = [i for i in range(config.num_hidden_layers) if i not in self.drop_layers]
        for layer in kept:
            per_weight = _bytes_per_weight(self.bits.get(layer, "fp32"))
            attention = 2 * hidden * query + 2 * hidden * keys
            total += (attention + 3 * hidden * self.mlp_units[layer]) * per_weight
            total += 2 * hidden * 4  # the two norms, float32
        vocabulary = config.vocab_size * hidden
        total += vocabulary * _bytes_per_weight(self.embedding) + hidden * 4
        if self.lm_head != self.embedding or not getattr(config, "tie_word_embeddings", False):
            total += vocabulary * _bytes_per_weight(self.lm_head)
        return total

    def slice_plan(self) -> "SlicePlan":
        from hwnas.llm.slicing import SlicePlan

        return SlicePlan(tuple(self.mlp_units), self.kv_groups, self.heads_per_group,
                         tuple(sorted(self.drop_layers)))

    def precision_plan(self) -> "PrecisionPlan":
        """By the exported model's layer indices (what is left after dropping)."""
        from hwnas.llm.plan import LayerPlan, PrecisionPlan

        kept = [i for i in range(self.config.num_hidden_layers) if i not in self.drop_layers]
        layers = {}
        for new, old in enumerate(kept):
            weight = weight_of(self.bits.get(old, "fp32"))
            layers[new] = LayerPlan(weight, weight)
        return PrecisionPlan(LayerPlan(), layers, weight_of(self.embedding),
                             weight_of(self.lm_head))
