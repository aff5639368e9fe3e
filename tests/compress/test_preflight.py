"""Models the search cannot handle are refused before any trial, naming the module, the knob
and the way out (real torchvision models, real torch-pruning, real ONNX export)."""

import pytest
import torch
import torchvision
from torch import nn

from hwnas.compress.preflight import preflight
from hwnas.compress.prune import pruning_setup
from hwnas.config.models import SearchSpace
from hwnas.errors import ConfigError
from hwnas.models.transformers import split_attention
from hwnas.train import resolve_stages


def space(base: dict, **knobs) -> SearchSpace:
    return SearchSpace.model_validate({"name": "m", "base_model": base,
                                       "dataset": {"builtin": "digits"}, "knobs": knobs})


def check(model: nn.Module, wanted: SearchSpace, shape=(3, 64, 64), **options):
    model.eval()
    split_attention(model)
    stages = resolve_stages(model, wanted.base_model, shape)
    return preflight(pruning_setup(model, stages, wanted, shape, 10, 8), wanted, 10, **options)


def torchvision_model(name: str) -> tuple[nn.Module, SearchSpace]:
    torch.manual_seed(0)
    return (torchvision.models.get_model(name, num_classes=10),
            space({"torchvision": name, "train": {}}))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_cnns_pass_at_their_most_aggressive(name):
    model, wanted = torchvision_model(name)
    report = check(model, wanted)
    assert report.parameters_pruned < 0.5 * report.parameters_base
    assert min(ratio for _, ratio in report.candidate.keep_ratios) == 0.25
    assert report.candidate.global_pruning_ratio == 0.3


def test_vision_transformer_passes_with_heads_and_mlp():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2,
                                                 num_heads=4, hidden_dim=64, mlp_dim=128,
                                                 num_classes=10)
    report = check(model, space({"torchvision": "VisionTransformer", "train": {}}), (3, 32, 32))
    assert dict(report.candidate.head_keep_ratios) == {"encoder_layer_0": 0.5,
                                                       "encoder_layer_1": 0.5}
    assert dict(report.candidate.mlp_keep_ratios) == {"encoder_layer_0": 0.5,
                                                      "encoder_layer_1": 0.5}


def test_grouped_convs_the_width_knob_cannot_change_are_named_with_the_exclusion():
    model, wanted = torchvision_model("regnet_y_400mf")
    with pytest.raises(ConfigError) as caught:
        check(model, wanted)
    message = str(caught.value)
    assert message.startswith("grouped conv with groups != channels in layer "
                              "trunk_output.block1.block1-0.f.b.0 (6 groups, 48 channels")
    assert "width knob does not change it" in message
    assert "knobs.width.exclude: ['*.f.b.0']" in message
    model, _ = torchvision_model("regnet_y_400mf")
    excluded = space({"torchvision": "regnet_y_400mf", "train": {}},
                     width={"exclude": ["*.f.b.0"]})
    assert check(model, excluded).parameters_pruned < model_parameters(model)


def model_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, words", [
    ("shufflenet_v2_x0_5", ["ShuffleNetV2", "channel shuffle", "width: null, pruning: null"]),
    ("swin_t", ["SwinTransformer", "shifted-window attention"]),  # would hang in torch-pruning
])
def test_architectures_torch_pruning_cannot_follow_are_refused(name, words):
    model, wanted = torchvision_model(name)
    with pytest.raises(ConfigError) as caught:
        check(model, wanted)
    for word in words:
        assert word in str(caught.value)
    # precision alone needs no pruning: the same model passes without structural knobs
    model, _ = torchvision_model(name)
    check(model, space({"torchvision": name, "train": {}}, width=None, pruning=None, heads=None,
                       mlp=None))


class FixedFlatten(nn.Module):
    """A model whose forward hard-codes a channel count: width on 'late' breaks it."""

    def __init__(self):
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.late(self.early(x)).reshape(-1, 32 * 4 * 4))


def test_a_knob_that_breaks_the_model_is_named_with_its_stage():
    wanted = space({"factory": "m:build", "stages": {"early": ["early"], "late": ["late"]},
                    "train": {}}, pruning=None)
    with pytest.raises(ConfigError) as caught:
        check(FixedFlatten(), wanted, (3, 8, 8))
    message = str(caught.value)
    assert "knobs.width on stage 'late' fails (RuntimeError: shape '[-1, 512]'" in message
    assert "knobs.width.stages" in message and "stage 'early'" not in message


def test_wrong_output_shape_and_input_are_named():
    wanted = space({"factory": "m:build", "train": {}})
    with pytest.raises(ConfigError, match=r"needs class scores of shape \(1, 10\)"):
        check(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(1), nn.LazyLinear(7)), wanted,
              (3, 8, 8))
    with pytest.raises(ConfigError, match=r"fails on one input of shape \[1, 8, 8\].*channels"):
        check(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10)), wanted, (1, 8, 8))


def test_tracing_that_does_not_finish_is_stopped():
    model, wanted = torchvision_model("resnet18")
    with pytest.raises(ConfigError, match="did not finish tracing the model within 0 s"):
        check(model, wanted, time_limit_s=0.01)
