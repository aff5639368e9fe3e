"""A precision plan for an exported decoder: per layer, its attention and its MLP matmuls,
and separately the embedding and the lm_head (what ``hwnas.llm.export`` writes; see there)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from hwnas.errors import ExportError

KINDS = ("fp32", "fp16", "int8", "int4")
BLOCK_SIZES = (32, 64, 128)


@dataclasses.dataclass(frozen=True)
class Weight:
    """One precision: kind, and the block size along the input dimension for int kinds."""

    kind: str = "fp32"
    block_size: int = 32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ExportError(f"weight precision {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in ("int4", "int8") and self.block_size not in BLOCK_SIZES:
            raise ExportError(f"block size {self.block_size} for {self.kind} is not one of "
                              f"{', '.join(map(str, BLOCK_SIZES))}")

    @property
    def label(self) -> str:
        """As the written graph is read back: ``int4/32``, ``fp16``."""
        return f"{self.kind}/{self.block_size}" if self.kind in ("int4", "int8") else self.kind


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One decoder layer: its attention matmuls (qkv, o) and its MLP matmuls (gate, up, down)."""

    attention: Weight = Weight()
    mlp: Weight = Weight()


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """``default`` for every layer ``layers`` does not name (by exported layer index)."""

    default: LayerPlan = LayerPlan()
    layers: Mapping[int, LayerPlan] = dataclasses.field(default_factory=dict)
    embedding: Weight = Weight()
    lm_head: Weight = Weight()
    symmetric: bool = True
    accuracy_level: int | None = 4

    def __post_init__(self) -> None:
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise ExportError(f"accuracy_level {self.accuracy_level} is not MatMulNBits' 0-4 "
                              f"(or None)")

    @classmethod
    def uniform(cls, kind: str, block_size: int = 32, embedding: str = "fp32",
                accuracy_level: int | None = 4) -> "PrecisionPlan":
        """Every layer and the lm_head ``kind``; the embedding ``embedding`` (the builder
        leaves it fp32 on the CPU too)."""
        weight = Weight(kind, block_size)
        return cls(LayerPlan(weight, weight), {}, Weight(embedding, block_size), weight,
                   accuracy_level=accuracy_level)

    def with_layers(self, indices: Iterable[int], attention: Weight | None = None,
                    mlp: Weight | None = None) -> "PrecisionPlan":
        """A copy where ``indices`` take ``attention`` and/or ``mlp`` (the rest unchanged)."""
        layers = dict(self.layers)
        for index in indices:
            old = layers.get(index, self.default)
            layers[index] = LayerPlan(attention or old.attention, mlp or old.mlp)
        return dataclasses.replace(self, layers=layers)

    def layer(self, index: int) -> LayerPlan:
        return self.layers.get(index, self.default)

    def for_part(self, part: str) -> Weight:
        """``layers.3.attn`` / ``layers.3.mlp`` / ``embedding`` / ``lm_head`` -> its Weight."""
        if part in ("embedding", "lm_head"):
            return getattr(self, part)
        _, index, kind = part.split(".")
        chosen = self.layer(int(index))
        return chosen.attention if kind == "attn" else chosen.mlp

    def as_dict(self) -> dict[str, Any]:
        def layer(plan: LayerPlan) -> dict[str, str]:
            return {"attention": plan.attention.label, "mlp": plan.mlp.label}
        return {"default": layer(self.default),
                "layers": {str(i): layer(p) for i, p in sorted(self.layers.items())},
                "embedding": self.embedding.label, "lm_head": self.lm_head.label,
                "symmetric": self.symmetric, "accuracy_level": self.accuracy_level}
