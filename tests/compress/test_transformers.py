"""Vision transformers pruned by whole heads, MLP units and embedding width (real torchvision
VisionTransformer, real torch-pruning), and every pruned model rebuilt from its channel plan."""

import pytest
import torch
import torchvision
from torch import nn

from hwnas.compress.prune import PruningSetup, prune, pruning_setup, replay
from hwnas.config.models import SearchSpace
from hwnas.models.transformers import SplitHeadAttention, attention_layers, split_attention
from hwnas.records import Candidate
from hwnas.train import resolve_stages

SHAPE = (3, 32, 32)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2,
                                                num_heads=4, hidden_dim=64, mlp_dim=128,
                                                num_classes=10).eval()


def space(**knobs) -> SearchSpace:
    return SearchSpace.model_validate({"name": "vit", "base_model": {"torchvision": "VisionTransformer",
                                                                    "train": {}},
                                       "dataset": {"builtin": "digits"}, "knobs": knobs})


def setup_for(model: nn.Module, wanted: SearchSpace, round_to: int = 8) -> PruningSetup:
    return pruning_setup(model, resolve_stages(model, wanted.base_model, SHAPE), wanted, SHAPE, 10,
                         round_to)


@pytest.fixture()
def vit():
    model = tiny_vit()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = model(x)
    assert split_attention(model) == ["encoder.layers.encoder_layer_0.self_attention",
                                      "encoder.layers.encoder_layer_1.self_attention"]
    return model, x, expected


def test_split_attention_computes_what_torchvision_computes(vit):
    model, x, expected = vit
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert all(isinstance(m, SplitHeadAttention) and m.num_heads == 4
               for m in attention_layers(model).values())


def test_heads_are_removed_whole_and_the_rest_computes_as_before(vit):
    model, x, _ = vit
    setup = setup_for(model, space())
    assert list(setup.units_of("heads")) == ["encoder_layer_0", "encoder_layer_1"]
    pruned = prune(setup, Candidate.build({}, "l1", 0.0, {}, head_keep_ratios={"encoder_layer_0": 0.5}), []).module
    first = attention_layers(pruned)["encoder.layers.encoder_layer_0.self_attention"]
    assert first.num_heads == 2 and first.qkv.out_features == 3 * 2 * 16
    assert first.proj.in_features == 32
    assert attention_layers(pruned)["encoder.layers.encoder_layer_1.self_attention"].num_heads == 4
    # which heads were kept: their q rows survive unchanged
    original = attention_layers(model)["encoder.layers.encoder_layer_0.self_attention"]
    kept = [h for h in range(4) if any(torch.equal(original.qkv.weight[h * 16:(h + 1) * 16],
                                                   first.qkv.weight[k * 16:(k + 1) * 16])
                                       for k in range(2))]
    assert len(kept) == 2
    # the base model with the other heads silenced (their projection columns zeroed) is the
    # pruned model: a head's contribution is exactly its columns of the output projection
    silenced = tiny_vit()
    split_attention(silenced)
    proj = attention_layers(silenced)["encoder.layers.encoder_layer_0.self_attention"].proj
    with torch.no_grad():
        for head in set(range(4)) - set(kept):
            proj.weight[:, head * 16:(head + 1) * 16] = 0
        assert torch.allclose(pruned(x), silenced(x), atol=1e-5)


def test_mlp_units_rounded_to_the_channel_multiple(vit):
    model, x, _ = vit
    setup = setup_for(model, space(mlp={"granularity": "layer", "keep_ratios": [0.3, 1.0]}), 16)
    assert list(setup.units_of("mlp")) == ["encoder.layers.encoder_layer_0.mlp",
                                     "encoder.layers.encoder_layer_1.mlp"]
    pruned = prune(setup, Candidate.build({}, "l1", 0.0, {}, mlp_keep_ratios=
                                          {"encoder.layers.encoder_layer_1.mlp": 0.3}), []).module
    mlp = pruned.encoder.layers.encoder_layer_1.mlp
    assert mlp[0].out_features == 32 and mlp[3].in_features == 32  # 128 * 0.3 = 38.4 -> 32
    assert pruned.encoder.layers.encoder_layer_0.mlp[0].out_features == 128
    assert pruned(x).shape == (4, 10)


def test_global_pruning_shrinks_the_embedding_with_class_token_and_positions(vit):
    model, x, _ = vit
    pruned = prune(setup_for(model, space()), Candidate.build({}, "l1", 0.3, {}), []).module
    width = pruned.conv_proj.out_channels
    assert width < 64 and width % 8 == 0
    assert pruned.class_token.shape == (1, 1, width)
    assert pruned.encoder.pos_embedding.shape == (1, 65, width)
    assert pruned.hidden_dim == width  # torchvision's forward reshapes with it
    for attention in attention_layers(pruned).values():  # heads are the heads knob's alone
        assert attention.num_heads == 4 and attention.qkv.in_features == width
    assert pruned(x).shape == (4, 10)


def test_timm_style_attention_is_split_and_pruned_too():
    class Attention(nn.Module):  # timm.models.vision_transformer.Attention's layout and maths
        def __init__(self, dim, num_heads):
            super().__init__()
            self.num_heads, self.head_dim = num_heads, dim // num_heads
            self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(b, n, c))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(12, 48)
            self.attn = Attention(48, 6)
            self.head = nn.Linear(48, 10)

        def forward(self, x):
            tokens = self.embed(x.flatten(2).transpose(1, 2))
            return self.head((tokens + self.attn(tokens)).mean(1))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 12, 4, 4)
    expected = model(x)
    assert split_attention(model) == ["attn"]
    assert torch.allclose(model(x), expected, atol=1e-5)
    setup = pruning_setup(model, {"block": ["attn"]}, space(heads={"keep_ratios": [0.5, 1.0]}),
                          (12, 4, 4), 10, 8)
    pruned = prune(setup, Candidate.build({}, "l1", 0.0, {}, head_keep_ratios={"block": 0.5}), []).module
    assert pruned.attn.num_heads == 3 and pruned(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["vit", "resnet18", "mobilenet_v2"])
def test_rebuilt_from_the_channel_plan_with_the_same_outputs(name):
    def fresh() -> nn.Module:
        if name == "vit":
            model = tiny_vit()
        else:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, num_classes=10).eval()
        split_attention(model)
        return model

    model = fresh()
    wanted = space()
    setup = setup_for(model, wanted)
    candidate = Candidate.build({s: 0.5 for s in setup.units_of("width")}, "l1", 0.2, {}, "minmax",
                                {u: 0.5 for u in setup.units_of("heads")}, {u: 0.5 for u in setup.units_of("mlp")})
    pruned = prune(setup, candidate, [])
    assert len(pruned.plan()) == (2 if name == "vit" else 2)  # heads+mlp or width, then global
    rebuilt = replay(fresh(), pruned.plan(), torch.zeros(1, *SHAPE))
    rebuilt.load_state_dict(pruned.module.state_dict())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned.module(x))
    assert sum(p.numel() for p in rebuilt.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
