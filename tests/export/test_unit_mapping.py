"""Per-layer precision plans on real torchvision graphs: every unit's weighted ops carry its
precision in the exported bytes, whatever BN folding, scope flattening, nested stages,
repeated module calls and functional attention did to the names.

Random weights (no downloads); 3x32x32 inputs keep the exports quick.
"""

import random

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

from hwnas.export.onnx import LAYER_TYPES, build_onnx, plan_units, precision_units
from hwnas.export.precision import PRECISIONS, realised_precisions

SHAPE = (3, 32, 32)
TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
               "efficientnet_b0", "regnet_y_400mf", "convnext_tiny"]


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                num_heads=2, hidden_dim=32, mlp_dim=64,
                                                num_classes=10)


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_vit() if name == "vit" else getattr(torchvision.models, name)(num_classes=10)
    return model.eval()


def weighted_ops_per_unit(path, units):
    """unit -> [(node, realised precision)] for every op with a constant weight."""
    realised = realised_precisions(onnx.load(str(path)))
    found = {}
    for node, precision in realised.items():
        found.setdefault(units.get(node), []).append((node, precision))
    return found


def check_every_unit(model, exported, plan):
    found = weighted_ops_per_unit(exported.path, dict(exported.node_units))
    assert None not in found, f"weighted ops of no unit: {found.get(None)}"
    assert set(plan) == {name for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    for unit, precision in plan.items():
        ops = found.get(unit, [])
        # one weighted op per layer: a Conv or Linear its own; attention its in-projection
        # (its out_proj Linear is a unit of its own, though attention calls it functionally)
        assert len(ops) == 1, f"unit {unit}: weighted ops {ops}"
        assert all(p == precision for _, p in ops), f"unit {unit} planned {precision}: {ops}"
    assert set(found) == set(plan)


@pytest.mark.parametrize("name", TORCHVISION + ["vit"])
def test_random_per_layer_plan_lands_on_every_unit(name, tmp_path):
    model = build_model(name)
    units = precision_units(model, {}, "layer")
    rng = random.Random(name)
    plan = {unit: rng.choice(PRECISIONS) for unit in plan_units(units)}
    calibration = np.random.default_rng(0).standard_normal((8, *SHAPE)).astype(np.float32)
    exported = build_onnx(model, SHAPE, plan, units, calibration, tmp_path / f"{name}.onnx")
    assert exported.exporter == "torchscript"
    check_every_unit(model, exported, plan)
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": calibration[:2]})[0].shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_the_dynamo_exporter_maps_the_same_units(name, tmp_path):
    """The fallback exporter keeps parameter names and puts module paths in node metadata."""
    model = build_model(name)
    units = precision_units(model, {}, "layer")
    rng = random.Random(name + "dynamo")
    plan = {unit: rng.choice(PRECISIONS) for unit in plan_units(units)}
    calibration = np.random.default_rng(0).standard_normal((8, *SHAPE)).astype(np.float32)
    exported = build_onnx(model, SHAPE, plan, units, calibration, tmp_path / f"{name}.onnx",
                          exporter="dynamo")
    assert exported.exporter == "dynamo"
    check_every_unit(model, exported, plan)


class Wrapped(nn.Module):
    """A user's wrapper with its stages nested two levels down, as in a real code base."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.ModuleDict({"backbone": torchvision.models.mobilenet_v2(num_classes=10)})

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net["backbone"](x)


def test_nested_stage_modules_of_a_wrapped_model(tmp_path):
    torch.manual_seed(0)
    model = Wrapped().eval()
    features = model.net["backbone"].features
    stages = {"stem": [features[0]], "early": list(features[1:7]), "late": list(features[7:])}
    units = precision_units(model, stages, "stage")
    assert plan_units(units) == ["early", "head", "late", "stem"]
    plan = {"stem": "fp32", "early": "int8", "late": "fp16", "head": "int8_weight_only"}
    calibration = np.random.default_rng(0).standard_normal((8, *SHAPE)).astype(np.float32)
    exported = build_onnx(model, SHAPE, plan, units, calibration, tmp_path / "wrapped.onnx")
    found = weighted_ops_per_unit(exported.path, dict(exported.node_units))
    assert {u: len(ops) for u, ops in found.items()} == {"stem": 1, "early": 17, "late": 34,
                                                        "head": 1}
    for unit, ops in found.items():
        assert {p for _, p in ops} == {plan[unit]}
