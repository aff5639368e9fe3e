"""Zero-cost accuracy hints for a language-model candidate: what the engine orders its first
proposals by and adds to its accuracy model's features, as multiply-accumulates are for an
image model (hwnas/search/compression.py ``proxies``). Without them the engine's start was a
coin toss between moves that fit the budgets: from int4 everywhere it spent trials on int4
blocks of 128 as readily as on int8 for a layer group.

- ``quantisation_noise`` (lower is better, given negated): the relative error that symmetric
  round-to-nearest blockwise quantisation (along the input dimension, as MatMulNBits packs
  it) adds to each weight matrix at its planned precision, summed over the matrices the
  model keeps. Computed once per (matrix, precision) from the base model's own weights.
- ``structure_kept`` (higher is better): the share of the base model's block influence that
  the kept layers hold, each weighted by the share of its MLP saliency its kept units hold
  (hwnas/llm/saliency.py: the units kept are the most salient).

Not the plan's bytes: an lm_head quantised apart from its tied embedding is a second copy
(more bytes, no more accuracy), and a coarser block for every layer then ranked above int4/32
everywhere, which is both smaller in what matters and more accurate.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from hwnas.llm.draft import LlmDraft

QMAX = {"int8": 127.0, "int4": 7.0}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def relative_error(weight: torch.Tensor, label: str) -> float:
    """||W - Q(W)||^2 / ||W||^2 for a precision label (int4/32, int8/128, fp16, fp32)."""
    kind, _, block = label.partition("/")
    w = weight.detach().float()
    if kind == "fp32":
        return 0.0
    if kind == "fp16":
        return float((w - w.half().float()).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30))
    size = int(block) if block else 32
    pad = (-w.shape[-1]) % size
    blocks = F.pad(w, (0, pad)).reshape(w.shape[0], -1, size)
    scale = blocks.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / QMAX[kind]
    quantised = (blocks / scale).round().clamp(-QMAX[kind] - 1, QMAX[kind]) * scale
    return float((blocks - quantised).pow(2).sum() / blocks.pow(2).sum().clamp_min(1e-30))


class LlmProxies:
    """The proxies of drafts of one base model (errors computed lazily, once each)."""

    def __init__(self, model: Any, saliency: Any) -> None:
        self.model, self.saliency = model, saliency
        self._errors: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        influence = [max(0.0, float(v)) for v in saliency.block_influence]
        total = sum(influence)
        self._influence = [v / total if total > 0 else 1.0 / len(influence) for v in influence]
        self._mlp_sorted = [torch.sort(s.float().clamp_min(0), descending=True).values.cumsum(0)
                            for s in saliency.mlp]

    def _error(self, name: str, label: str) -> float:
        key = (name, label)
        with self._lock:
            if key not in self._errors:
                self._errors[key] = relative_error(self.model.get_parameter(name), label)
            return self._errors[key]

    def _layer_error(self, layer: int, label: str) -> float:
        return sum(self._error(f"model.layers.{layer}.{p}.weight", label) for p in PROJECTIONS)

    def _mlp_kept(self, layer: int, units: int) -> float:
        cumulative = self._mlp_sorted[layer]
        whole = float(cumulative[-1])
        return float(cumulative[units - 1]) / whole if units > 0 and whole > 0 else \
            (1.0 if units >= len(cumulative) else units / max(1, len(cumulative)))

    def of(self, draft: LlmDraft) -> Mapping[str, float]:
        layers = draft.config.num_hidden_layers
        kept = [i for i in range(layers) if i not in draft.drop_layers]
        noise = sum(self._layer_error(i, draft.bits.get(i, "fp32")) for i in kept)
        noise += self._error("model.embed_tokens.weight", draft.embedding)
        noise += self._error("lm_head.weight", draft.lm_head)
        structure = sum(self._influence[i] * self._mlp_kept(i, draft.mlp_units[i]) for i in kept)
        return {"quantisation_noise": -noise, "structure_kept": structure}
