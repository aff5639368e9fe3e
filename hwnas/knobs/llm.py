"""The knobs of a language-model search (``base_model: {causal_lm: ...}``), one class each:

- ``llm_mlp``: MLP hidden units kept per group of consecutive decoder layers, the units ranked
  by activation-aware saliency on the domain text (Wanda's weight x input-norm score);
- ``llm_heads``: key/value groups kept, and query heads kept within each group, the same in
  every layer (the exporter writes one GroupQueryAttention head count for all layers);
- ``llm_layers``: whole decoder layers dropped, the least influential on the domain text first
  (block influence; the first and last layers are never dropped);
- ``llm_bits``: weight precision per layer group (int4 / int8 blocks of 32, 64 or 128 through
  onnxruntime's MatMulNBits, fp16, fp32), and of the embedding and the lm_head separately.

Each turns its value into its part of a ``LlmDraft`` (hwnas/llm/draft.py: the slice plan and
the precision plan that hwnas/llm/slicing.py and hwnas/llm/export.py carry out); nothing here
touches a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Hashable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution
from pydantic import Field, field_validator

from hwnas.config.fields import Fraction, Frozen
from hwnas.errors import ConfigError
from hwnas.knobs.base import Knob, ModelParts, Pick, pairs
from hwnas.llm.draft import LlmDraft

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile

PRECISIONS = ("fp32", "fp16", "int8/32", "int8/64", "int8/128", "int4/32", "int4/64", "int4/128")
# least destructive first: what the engine's ladders walk down
_RANK = {label: index for index, label in enumerate(PRECISIONS)}
Groups = Annotated[int, Field(ge=1, le=1024)]


def layer_groups(layers: int, groups: int) -> dict[str, tuple[int, ...]]:
    """``groups`` runs of consecutive layers, as even as possible: "layers_0_9" -> (0..9)."""
    groups = min(groups, layers)
    bounds = [round(i * layers / groups) for i in range(groups + 1)]
    return {f"layers_{lo}_{hi - 1}": tuple(range(lo, hi))
            for lo, hi in zip(bounds, bounds[1:])}


class LlmKnob(Knob):
    """A knob of language models: its value becomes part of a LlmDraft."""

    family = "causal_lm"
    record_key = ""

    def config_of(self, model: ModelParts) -> Any:
        return model.model.config

    def apply(self, draft: LlmDraft, value: Any, settings: Any) -> None:
        """Write its value into ``draft`` (``settings``: its section of the space)."""

    def record(self, value: Any) -> dict[str, Any]:
        return {self.record_key: dict(value) if isinstance(value, tuple) else value}

    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        return self.normalize(data[self.record_key]) if self.record_key in data else None


def _descending(values: Sequence[float]) -> list[float]:
    return sorted(set(values), reverse=True)


class LlmMlpSettings(Frozen):
    """MLP hidden units kept, one fraction per group of consecutive decoder layers (rounded
    to ``multiple`` units); the units kept are the most salient on the domain text."""

    keep_ratios: Annotated[list[Fraction], Field(min_length=1)] = [0.5, 0.625, 0.75, 0.875, 1.0]
    groups: Groups = 3
    multiple: Annotated[int, Field(ge=1, le=4096)] = 32


class LlmMlp(LlmKnob):
    name = "llm_mlp"
    config = LlmMlpSettings
    record_key = "mlp_keep_by_group"
    order = 10
    ladder_role = "rungs"

    def units(self, settings: Any, model: ModelParts) -> Mapping[str, Any]:
        return layer_groups(self.config_of(model).num_hidden_layers, settings.groups)

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        keep = _descending(settings.keep_ratios)
        return {f"llm_mlp_{unit}": CategoricalDistribution(keep) for unit in units}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable | None:
        if settings is None:
            return None
        return pairs({unit: float(pick(f"llm_mlp_{unit}", 1.0)) for unit in units})

    def neutral(self, units: Sequence[str]) -> Hashable:
        return pairs({unit: 1.0 for unit in units})

    def uniform(self, params: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
        first = next(iter(params.values()))
        assert isinstance(first, CategoricalDistribution)
        return [{name: keep for name in params} for keep in first.choices]

    def normalize(self, value: Any) -> Hashable:
        return pairs({unit: float(keep) for unit, keep in pairs(value)})

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return f"mlp[{' '.join(f'{unit[7:]}={keep:g}' for unit, keep in value)}]"

    def apply(self, draft: LlmDraft, value: Any, settings: Any) -> None:
        multiple = settings.multiple if settings is not None else 32
        for unit, keep in value:
            _, lo, hi = unit.split("_")
            for layer in range(int(lo), int(hi) + 1):
                full = draft.config.intermediate_size
                kept = max(multiple, int(math.floor(full * keep / multiple + 0.5)) * multiple)
                draft.mlp_units[layer] = min(full, kept)


class LlmHeadsSettings(Frozen):
    """Attention heads kept, the same in every layer: a fraction of the key/value groups, and
    of the query heads within each kept group (at least one of each)."""

    kv_keep_ratios: Annotated[list[Fraction], Field(min_length=1)] = [1.0]
    query_keep_ratios: Annotated[list[Fraction], Field(min_length=1)] = [0.67, 1.0]


class LlmHeads(LlmKnob):
    name = "llm_heads"
    config = LlmHeadsSettings
    enabled_by_default = False  # heads cost a lot of quality for little speed at batch 1
    record_key = "attention_keep"
    order = 20

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {"llm_kv_keep": CategoricalDistribution(_descending(settings.kv_keep_ratios)),
                "llm_query_keep": CategoricalDistribution(_descending(settings.query_keep_ratios))}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable | None:
        if settings is None:
            return None
        return (float(pick("llm_kv_keep", 1.0)), float(pick("llm_query_keep", 1.0)))

    def neutral(self, units: Sequence[str]) -> Hashable:
        return (1.0, 1.0)

    def normalize(self, value: Any) -> Hashable:
        if isinstance(value, Mapping):
            value = (value["kv_groups"], value["query_heads"])
        return (float(value[0]), float(value[1]))

    def record(self, value: Any) -> dict[str, Any]:
        return {self.record_key: {"kv_groups": value[0], "query_heads": value[1]}}

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return "" if value == (1.0, 1.0) else f"heads[kv={value[0]:g} q={value[1]:g}]"

    def apply(self, draft: LlmDraft, value: Any, settings: Any) -> None:
        config = draft.config
        group = config.num_attention_heads // config.num_key_value_heads
        draft.kv_groups = max(1, min(config.num_key_value_heads,
                                     round(config.num_key_value_heads * value[0])))
        draft.heads_per_group = max(1, min(group, round(group * value[1])))


class LlmLayersSettings(Frozen):
    """Whole decoder layers dropped (how many), the least influential on the domain text
    first; the first and last layers are kept."""

    drop: Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(min_length=1)] = [0, 1, 2, 4]


class LlmLayers(LlmKnob):
    name = "llm_layers"
    config = LlmLayersSettings
    record_key = "layers_dropped"
    order = 30

    def shape(self, settings: Any, units: Sequence[str], device: "DeviceProfile"
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return (), ()

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        return {"llm_drop_layers": CategoricalDistribution(sorted(set(settings.drop)))}

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable | None:
        return None if settings is None else int(pick("llm_drop_layers", 0))

    def neutral(self, units: Sequence[str]) -> Hashable:
        return 0

    def normalize(self, value: Any) -> Hashable:
        return int(value)

    def record(self, value: Any) -> dict[str, Any]:
        return {self.record_key: value}

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return f"drop={value}" if value else ""

    def apply(self, draft: LlmDraft, value: Any, settings: Any) -> None:
        if value > len(draft.drop_order):
            raise ConfigError(f"knobs.llm_layers.drop: {value} layers asked; the model can drop "
                              f"{len(draft.drop_order)} (its first and last are kept)")
        draft.drop_layers = set(draft.drop_order[:value])


class LlmBitsSettings(Frozen):
    """Weight precision per group of consecutive decoder layers, and of the embedding and the
    lm_head (an int8 embedding cannot be written: onnxruntime's GatherBlockQuantized is
    4-bit only). Labels: fp32, fp16, int8/B, int4/B with block size B of 32, 64 or 128."""

    precisions: Annotated[list[str], Field(min_length=1)] = ["fp32", "int8/32", "int4/32"]
    groups: Groups = 3
    embedding: Annotated[list[str], Field(min_length=1)] = ["fp16", "int4/32"]
    lm_head: Annotated[list[str], Field(min_length=1)] = ["int8/32", "int4/32"]

    @field_validator("precisions", "embedding", "lm_head")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for label in value:
            if label not in PRECISIONS:
                raise ValueError(f"{label!r} is not a weight precision; allowed: "
                                 f"{', '.join(PRECISIONS)}")
        return value


class LlmBits(LlmKnob):
    name = "llm_bits"
    config = LlmBitsSettings
    record_key = "weight_bits"
    order = 40
    ladder_role = "ladders"

    def units(self, settings: Any, model: ModelParts) -> Mapping[str, Any]:
        groups = layer_groups(self.config_of(model).num_hidden_layers, settings.groups)
        return {**groups, "embedding": (), "lm_head": ()}

    def shape(self, settings: Any, units: Sequence[str], device: "DeviceProfile"
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        if settings is not None and any(label.startswith("int8") for label in settings.embedding):
            raise ConfigError("knobs.llm_bits.embedding: int8 cannot be written for the "
                              "embedding (GatherBlockQuantized is 4-bit only); allowed: fp32, "
                              "fp16, int4/32, int4/64, int4/128")
        return super().shape(settings, units, device)

    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        def ordered(labels: Sequence[str]) -> CategoricalDistribution:
            return CategoricalDistribution(sorted(set(labels), key=_RANK.__getitem__))

        found = {f"llm_bits_{unit}": ordered(settings.precisions)
                 for unit in units if unit.startswith("layers_")}
        found["llm_bits_embedding"] = ordered(settings.embedding)
        found["llm_bits_lm_head"] = ordered(settings.lm_head)
        return found

    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable | None:
        if settings is None:
            return None
        return pairs({unit: str(pick(f"llm_bits_{unit}", "fp32")) for unit in units})

    def neutral(self, units: Sequence[str]) -> Hashable:
        return pairs({unit: "fp32" for unit in units})

    def uniform(self, params: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
        """One ladder per precision of the layers, the embedding and lm_head at the nearest
        precision they allow (none more precise than the layers')."""
        layers = [name for name in params if name.startswith("llm_bits_layers_")]
        found = []
        choices = params[layers[0]].choices if layers else ()  # type: ignore[attr-defined]
        for label in choices:
            step = {name: label for name in layers}
            for name in ("llm_bits_embedding", "llm_bits_lm_head"):
                allowed = params[name].choices  # type: ignore[attr-defined]
                fit = [c for c in allowed if _RANK[c] >= _RANK[label]]
                step[name] = fit[0] if fit else allowed[-1]
            found.append(step)
        return found

    def normalize(self, value: Any) -> Hashable:
        return pairs({unit: str(label) for unit, label in pairs(value)})

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        parts = (f"{unit.replace('layers_', '')}:{label}" for unit, label in value)
        return f"bits[{' '.join(parts)}]"

    def apply(self, draft: LlmDraft, value: Any, settings: Any) -> None:
        for unit, label in value:
            if unit == "embedding":
                draft.embedding = label
            elif unit == "lm_head":
                draft.lm_head = label
            else:
                _, lo, hi = unit.split("_")
                for layer in range(int(lo), int(hi) + 1):
                    draft.bits[layer] = label


def draft_of(values: Mapping[str, Any], knobs: Any, config: Any,
             drop_order: Sequence[int]) -> LlmDraft:
    """The candidate's knob values (knob name -> value) as one LlmDraft (``knobs``: the
    space's ``knobs:`` section)."""
    from hwnas.knobs.base import registered

    draft = LlmDraft.neutral(config, drop_order)
    for knob in registered("causal_lm"):
        if knob.name in values and isinstance(knob, LlmKnob):
            knob.apply(draft, values[knob.name], knob.settings(knobs))
    return draft

