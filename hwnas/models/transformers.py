"""Vision transformers made prunable by heads and MLP units.

``nn.MultiheadAttention`` ties the attention's inner width to the embedding width and keeps
q/k/v in one parameter, so neither whole heads nor the residual width can be removed from it
(torch-pruning breaks it; torchvision's ViT then fails later in export). Each torchvision
encoder block's attention, and each timm-style attention (``qkv`` and ``proj`` linears), is
therefore replaced once, when the base model is built, by ``SplitHeadAttention``: the same
arithmetic with a ``qkv`` and a ``proj`` ``nn.Linear`` whose inner width may shrink by whole
heads. Its outputs equal the original's (tested), and it exports to plain MatMul/Softmax ONNX
nodes under the block's scope, so per-layer precision reaches the attention's linears too.
"""

from __future__ import annotations

import torch
from torch import nn


class SplitHeadAttention(nn.Module):
    """Multi-head self-attention whose head count follows its weights: ``qkv`` maps the
    embedding to q, k and v of ``num_heads`` heads of ``head_dim`` each; ``proj`` maps the
    heads back. Removing a head removes its rows of ``qkv`` and its columns of ``proj``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, tuple_output: bool = True,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)
        self.head_dim = head_dim
        self.dropout = dropout
        # torchvision calls attention as nn.MultiheadAttention: (x, x, x) -> (out, weights)
        self.tuple_output = tuple_output
        self.q_norm = q_norm or nn.Identity()
        self.k_norm = k_norm or nn.Identity()

    @property
    def num_heads(self) -> int:
        return self.qkv.out_features // (3 * self.head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                value: torch.Tensor | None = None, need_weights: bool = False,
                **unused: object):  # type: ignore[no-untyped-def]
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("SplitHeadAttention is self-attention: key and value must be the query")
        if any(v is not None for v in unused.values()):
            raise ValueError(f"SplitHeadAttention does not take {sorted(unused)}")
        batch, tokens, _ = query.shape
        # -1: the head count is whatever pruning left
        qkv = self.qkv(query).reshape(batch, tokens, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        weights = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = nn.functional.dropout(weights, self.dropout)
        out = self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))
        return (out, None) if self.tuple_output else out


def _from_multihead(mha: nn.MultiheadAttention) -> SplitHeadAttention | None:
    """The same attention as ``mha`` (batch-first self-attention without extras), or None."""
    if not (mha._qkv_same_embed_dim and mha.batch_first and mha.bias_k is None
            and not mha.add_zero_attn and mha.in_proj_weight is not None):
        return None
    bias = mha.in_proj_bias is not None
    split = SplitHeadAttention(mha.embed_dim, mha.num_heads, mha.head_dim, bias, mha.dropout)
    with torch.no_grad():
        split.qkv.weight.copy_(mha.in_proj_weight)
        split.proj.weight.copy_(mha.out_proj.weight)
        if bias:
            split.qkv.bias.copy_(mha.in_proj_bias)
            split.proj.bias.copy_(mha.out_proj.bias)
    return split


def _is_timm_style(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "qkv", None), nn.Linear)
            and isinstance(getattr(module, "proj", None), nn.Linear)
            and isinstance(getattr(module, "num_heads", None), int)
            and not isinstance(module, SplitHeadAttention)
            and module.qkv.out_features == 3 * module.proj.in_features
            and module.proj.in_features % module.num_heads == 0)


def _from_timm_style(module: nn.Module) -> SplitHeadAttention:
    heads = module.num_heads
    head_dim = module.proj.in_features // heads
    split = SplitHeadAttention(module.qkv.in_features, heads, head_dim, module.qkv.bias is not None,
                               float(getattr(getattr(module, "attn_drop", None), "p", 0.0)),
                               tuple_output=False, q_norm=getattr(module, "q_norm", None),
                               k_norm=getattr(module, "k_norm", None))
    split.qkv.load_state_dict(module.qkv.state_dict())
    split.proj.load_state_dict(module.proj.state_dict())
    return split


def _same_outputs(old: nn.Module, new: SplitHeadAttention, embed_dim: int, as_tuple: bool) -> bool:
    """Whether the replacement computes what the original does (on random tokens)."""
    x = torch.randn(2, 5, embed_dim, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = old(x, x, x, need_weights=False)[0] if as_tuple else old(x)
            got = new(x, x, x)[0] if as_tuple else new(x)
    except Exception:  # noqa: BLE001 - not a (batch, tokens, channels) self-attention
        return False
    return isinstance(expected, torch.Tensor) and expected.shape == got.shape and bool(
        torch.allclose(expected, got, atol=1e-5, rtol=1e-4))


def split_attention(model: nn.Module) -> list[str]:
    """Replace torchvision encoder-block and timm-style attention in place, where the
    replacement's outputs equal the original's (anything else, e.g. windowed attention with
    relative position biases, stays as it is); returns the names of the replaced modules."""
    from torchvision.models.vision_transformer import EncoderBlock

    replaced = []
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new, as_tuple = None, True
        if isinstance(module, nn.MultiheadAttention) and isinstance(parent, EncoderBlock):
            new = _from_multihead(module)
        elif _is_timm_style(module):
            new, as_tuple = _from_timm_style(module), False
        if new is None:
            continue
        was_training = module.training
        module.eval()
        new.eval()
        if _same_outputs(module, new, new.qkv.in_features, as_tuple):
            new.train(was_training)
            setattr(parent, child, new)
            replaced.append(name)
        else:
            module.train(was_training)
    return replaced


def attention_layers(model: nn.Module) -> dict[str, SplitHeadAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SplitHeadAttention)}


def mlp_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Name of each transformer MLP -> its first linear (whose outputs are the hidden units):
    torchvision's MLPBlock (0: Linear ... 3: Linear) and timm-style (fc1, fc2)."""
    from torchvision.models.vision_transformer import MLPBlock

    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, MLPBlock) and isinstance(module[0], nn.Linear):
            found[name] = module[0]
        elif (isinstance(getattr(module, "fc1", None), nn.Linear)
              and isinstance(getattr(module, "fc2", None), nn.Linear)):
            found[name] = module.fc1
    return found


def sync_dimensions(model: nn.Module) -> None:
    """After pruning: attributes a model's forward reads instead of its weights' shapes.
    torchvision's VisionTransformer reshapes patches with ``self.hidden_dim``."""
    from torchvision.models.vision_transformer import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
