"""Structured pruning of a decoder by slicing its projections directly.

torch-pruning's dependency graph hangs on Hugging Face Llama (upstream issue #527), and a
decoder's dependencies are few and known, so each cut is done by hand and checked:

- MLP hidden units, per layer (widths may differ between layers): rows of gate_proj and
  up_proj, columns of down_proj.
- Attention heads, respecting grouped-query attention: whole key/value groups (rows of k_proj
  and v_proj, the rows of q_proj of every query head in the group, columns of o_proj), and/or
  query heads within every group. The counts are the same in every layer: onnxruntime-genai's
  GroupQueryAttention takes one head count per model. Which groups and heads stay is chosen per
  layer by saliency.
- Whole decoder layers; the survivors are renumbered (their key/value cache slots follow).

Units are kept in their original order; the kept ones are the most salient
(hwnas/llm/saliency.py). Every cut is checked: the weight shapes the config implies, and one
forward pass.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from hwnas.errors import ExportError
from hwnas.llm.saliency import Saliency, decoder_layers


@dataclasses.dataclass(frozen=True)
class SlicePlan:
    """What a candidate keeps, indexed by the base model's layers."""

    mlp_units: tuple[int, ...]  # hidden units kept per original layer
    kv_groups: int  # key/value groups kept in every layer
    heads_per_group: int  # query heads kept per group
    drop_layers: tuple[int, ...] = ()  # original indices of the layers removed

    @classmethod
    def neutral(cls, config: Any) -> "SlicePlan":
        return cls(tuple([config.intermediate_size] * config.num_hidden_layers),
                   config.num_key_value_heads,
                   config.num_attention_heads // config.num_key_value_heads)

    def check(self, config: Any) -> None:
        """ExportError naming what this plan asks that the model cannot give."""
        layers = config.num_hidden_layers
        if len(self.mlp_units) != layers:
            raise ExportError(f"the plan has MLP widths for {len(self.mlp_units)} layers; the "
                              f"model has {layers}")
        for index, units in enumerate(self.mlp_units):
            if not 1 <= units <= config.intermediate_size:
                raise ExportError(f"layer {index}: {units} MLP units asked; 1 to "
                                  f"{config.intermediate_size} possible")
        group_size = config.num_attention_heads // config.num_key_value_heads
        if not 1 <= self.kv_groups <= config.num_key_value_heads:
            raise ExportError(f"{self.kv_groups} key/value groups asked; 1 to "
                              f"{config.num_key_value_heads} possible")
        if not 1 <= self.heads_per_group <= group_size:
            raise ExportError(f"{self.heads_per_group} query heads per group asked; 1 to "
                              f"{group_size} possible")
        bad = [index for index in self.drop_layers if not 0 <= index < layers]
        if bad or len(set(self.drop_layers)) != len(self.drop_layers):
            raise ExportError(f"layers to drop {list(self.drop_layers)}: each once, 0 to {layers - 1}")
        if len(self.drop_layers) >= layers:
            raise ExportError("the plan drops every decoder layer")


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores, in their original order."""
    top = torch.topk(scores, count).indices
    return torch.sort(top).values


def _rows(linear: torch.nn.Linear, index: torch.Tensor) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[index].clone())
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data[index].clone())
    linear.out_features = len(index)


def _columns(linear: torch.nn.Linear, index: torch.Tensor) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[:, index].clone())
    linear.in_features = len(index)


def slice_mlp(layer: Any, keep: torch.Tensor) -> None:
    _rows(layer.mlp.gate_proj, keep)
    _rows(layer.mlp.up_proj, keep)
    _columns(layer.mlp.down_proj, keep)


def slice_attention(layer: Any, groups: torch.Tensor, heads_in_group: list[torch.Tensor],
                    head_dim: int, group_size: int) -> None:
    """Keep key/value ``groups`` and, inside kept group k, query heads ``heads_in_group[k]``
    (indices within the group)."""
    attention = layer.self_attn
    kv_rows = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in groups.tolist()])
    query_heads = [int(g) * group_size + int(h)
                   for g, within in zip(groups.tolist(), heads_in_group) for h in within.tolist()]
    q_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in query_heads])
    _rows(attention.q_proj, q_rows)
    _rows(attention.k_proj, kv_rows)
    _rows(attention.v_proj, kv_rows)
    _columns(attention.o_proj, q_rows)
    attention.num_key_value_groups = len(heads_in_group[0])


def _drop(model: Any, drop: tuple[int, ...]) -> None:
    config = model.config
    layers = decoder_layers(model)
    kept = [layer for index, layer in enumerate(layers) if index not in set(drop)]
    model.model.layers = torch.nn.ModuleList(kept)
    for new_index, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_index  # its slot in the key/value cache
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [kind for index, kind in enumerate(config.layer_types)
                              if index not in set(drop)]
    config.num_hidden_layers = len(kept)


def slice_model(model: Any, plan: SlicePlan, saliency: Saliency) -> Any:
    """A pruned copy of ``model`` as ``plan`` asks, the kept units chosen by ``saliency``."""
    config = model.config
    plan.check(config)
    pruned = copy.deepcopy(model)
    head_dim = pruned.model.layers[0].self_attn.head_dim
    group_size = config.num_attention_heads // config.num_key_value_heads
    for index, layer in enumerate(decoder_layers(pruned)):
        if index in plan.drop_layers:
            continue
        if plan.mlp_units[index] < layer.mlp.down_proj.in_features:
            slice_mlp(layer, _keep(saliency.mlp[index], plan.mlp_units[index]))
        if plan.kv_groups < config.num_key_value_heads or plan.heads_per_group < group_size:
            groups = _keep(saliency.kv_groups[index], plan.kv_groups)
            per_head = saliency.heads[index].reshape(config.num_key_value_heads, group_size)
            within = [_keep(per_head[int(g)], plan.heads_per_group) for g in groups.tolist()]
            slice_attention(layer, groups, within, head_dim, group_size)
    new_config = pruned.config
    new_config.num_key_value_heads = plan.kv_groups
    new_config.num_attention_heads = plan.kv_groups * plan.heads_per_group
    new_config.head_dim = head_dim
    if plan.drop_layers:
        _drop(pruned, plan.drop_layers)
    widths = [layer.mlp.down_proj.in_features for layer in decoder_layers(pruned)]
    # one intermediate size where every layer agrees (save_pretrained round-trips then); the
    # widest otherwise, with the per-layer widths recorded for the exporter and the report
    new_config.intermediate_size = max(widths)
    new_config.hwnas_intermediate_sizes = widths
    check_shapes(pruned)
    return pruned


def check_shapes(model: Any) -> None:
    """ExportError where a projection disagrees with the config or one forward pass fails."""
    config = model.config
    head_dim = model.model.layers[0].self_attn.head_dim
    hidden = config.hidden_size
    for index, layer in enumerate(decoder_layers(model)):
        attention, mlp = layer.self_attn, layer.mlp
        expected = {
            "q_proj": (config.num_attention_heads * head_dim, hidden),
            "k_proj": (config.num_key_value_heads * head_dim, hidden),
            "v_proj": (config.num_key_value_heads * head_dim, hidden),
            "o_proj": (hidden, config.num_attention_heads * head_dim),
        }
        for name, shape in expected.items():
            found = tuple(getattr(attention, name).weight.shape)
            if found != shape:
                raise ExportError(f"layer {index} {name}: weight {found}, expected {shape}")
        units = mlp.down_proj.in_features
        for name, shape in (("gate_proj", (units, hidden)), ("up_proj", (units, hidden)),
                            ("down_proj", (hidden, units))):
            found = tuple(getattr(mlp, name).weight.shape)
            if found != shape:
                raise ExportError(f"layer {index} mlp.{name}: weight {found}, expected {shape}")
        if attention.layer_idx != index:
            raise ExportError(f"layer {index} attends through cache slot {attention.layer_idx}")
    with torch.no_grad():
        probe = torch.zeros((1, 4), dtype=torch.long)
        logits = model(input_ids=probe, use_cache=False).logits
    if tuple(logits.shape) != (1, 4, config.vocab_size) or not torch.isfinite(logits).all():
        raise ExportError(f"the pruned model's forward pass gave logits {tuple(logits.shape)}"
                          f"{'' if torch.isfinite(logits).all() else ' with non-finite values'}")
