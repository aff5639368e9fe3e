"""What each precision writes into the bytes, on a small CNN with stage units."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

from hwnas.evaluate import compare_outputs, run_batches
from hwnas.export.onnx import build_onnx, precision_units
from hwnas.export.precision import ExportStyle, realised_precisions

SHAPE = (3, 16, 16)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.stage1 = nn.Sequential(block(3, 16), block(16, 16))
        self.stage2 = nn.Sequential(block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.stage2(self.stage1(x)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # BN statistics that are not the identity, as after training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
        model.classifier.bias.zero_()  # the outputs come from the activations, not a bias
    units = precision_units(model, {"stage1": [model.stage1], "stage2": [model.stage2]}, "stage")
    data = np.random.default_rng(0).standard_normal((96, *SHAPE)).astype(np.float32)
    return model, units, data[:64], data[64:]


def build(net, tmp_path, plan, name="m.onnx", **kwargs):
    model, units, calibration, _ = net
    return build_onnx(model, SHAPE, plan, units, calibration, tmp_path / name, **kwargs)


def outputs(path, x):
    import onnxruntime as ort

    return run_batches(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), x, 32)


def plan_of(precision):
    return dict.fromkeys(["stage1", "stage2", "head"], precision)


@pytest.mark.parametrize("precision", ["fp16", "int8", "a16w8", "int8_weight_only"])
def test_each_precision_is_in_the_bytes_and_stays_close_to_fp32(net, tmp_path, precision):
    reference = build(net, tmp_path, plan_of("fp32"), "fp32.onnx")
    exported = build(net, tmp_path, plan_of(precision))
    realised = realised_precisions(onnx.load(str(exported.path)))
    assert len(realised) == 4 and set(realised.values()) == {precision}
    held_out = net[3]
    fidelity = compare_outputs(outputs(reference.path, held_out), outputs(exported.path, held_out))
    assert fidelity.cosine_mean > {"fp16": 0.9999, "a16w8": 0.999}.get(precision, 0.99)


def casts(path):
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "Cast"]


def test_fp16_islands_have_one_cast_per_border_tensor(net, tmp_path):
    exported = build(net, tmp_path, {"stage1": "fp16", "stage2": "fp32", "head": "fp16"})
    # input -> stage1 (to fp16), stage1 -> stage2 (to fp32), stage2 -> head, head -> output
    found = casts(exported.path)
    assert [c.attribute[0].i for c in found] == [TensorProto.FLOAT16, TensorProto.FLOAT,
                                                 TensorProto.FLOAT16, TensorProto.FLOAT]
    assert realised_precisions(onnx.load(str(exported.path))) == dict(exported.node_precisions)
    assert sorted(set(dict(exported.node_precisions).values())) == ["fp16", "fp32"]


def test_fp16_inputs_and_outputs_when_the_profile_says_so(net, tmp_path):
    exported = build(net, tmp_path, plan_of("fp16"), style=ExportStyle(io_precision="fp16"))
    graph = onnx.load(str(exported.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert casts(exported.path) == []  # the whole graph is one island: no border
    x = net[3].astype(np.float16)
    assert outputs(exported.path, x).shape == (len(x), 10)


def test_a16w8_next_to_int8_converts_at_the_unit_border(net, tmp_path):
    exported = build(net, tmp_path, {"stage1": "a16w8", "stage2": "int8", "head": "int8"})
    graph = onnx.load(str(exported.path)).graph
    realised = realised_precisions(onnx.load(str(exported.path)))
    assert sorted(realised.values()) == ["a16w8", "a16w8", "int8", "int8"]
    zero_points = {t.name: t.data_type for t in graph.initializer}
    quantize_types = {zero_points[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert quantize_types == {TensorProto.UINT8, TensorProto.UINT16}
    assert {o.version for o in onnx.load(str(exported.path)).opset_import if o.domain == ""} == {21}


def test_weight_only_reads_float_activations_after_an_int8_unit(net, tmp_path):
    """Dequantized input + dequantized weights would make TensorRT run the layer in int8."""
    exported = build(net, tmp_path, {"stage1": "int8", "stage2": "int8", "head": "int8_weight_only"})
    graph = onnx.load(str(exported.path)).graph
    producers = {out: n for n in graph.node for out in n.output}
    head = next(n for n in graph.node if n.op_type == "Gemm")
    assert producers[head.input[0]].op_type != "DequantizeLinear"
    assert producers[head.input[1]].op_type == "DequantizeLinear"
    assert realised_precisions(onnx.load(str(exported.path)))[head.name] == "int8_weight_only"


def test_tensorrt_style_int8_is_symmetric(net, tmp_path):
    exported = build(net, tmp_path, plan_of("int8"), style=ExportStyle(int8_activations="int8"))
    graph = onnx.load(str(exported.path)).graph
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [initializers[n.input[2]] for n in graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype in (np.int8, np.int32) and not z.any() for z in zero_points)


def activation_scales(path):
    graph = onnx.load(str(path)).graph
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: float(initializers[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and initializers[n.input[1]].size == 1}


def test_calibration_method_changes_the_activation_ranges(net, tmp_path):
    scales = {method: activation_scales(build(net, tmp_path, plan_of("int8"), f"{method}.onnx",
                                              calibration_method=method).path)
              for method in ("minmax", "entropy", "percentile")}
    assert scales["minmax"].keys() == scales["percentile"].keys() == scales["entropy"].keys()
    tensors = list(scales["minmax"])
    # both clip the tails that min-max keeps (entropy much more, on ReLU outputs)
    for method in ("percentile", "entropy"):
        assert sum(scales[method][t] < scales["minmax"][t] for t in tensors) >= len(tensors) // 2


def test_a_wrecked_layer_shows_in_the_fidelity(net, tmp_path):
    """int8 calibrated on data 1000x too small saturates every activation: the plan is
    valid bytes, the outputs are not the model's any more."""
    model, units, calibration, held_out = net
    reference = build(net, tmp_path, plan_of("fp32"), "fp32.onnx")
    good = build(net, tmp_path, plan_of("int8"), "good.onnx")
    wrecked = build_onnx(model, SHAPE, plan_of("int8"), units, calibration * 1e-3,
                         tmp_path / "wrecked.onnx")
    expected = outputs(reference.path, held_out)
    healthy = compare_outputs(expected, outputs(good.path, held_out))
    broken = compare_outputs(expected, outputs(wrecked.path, held_out))
    assert healthy.cosine_mean > 0.99 and healthy.top1_agreement >= 0.9
    assert broken.cosine_mean < 0.95 and broken.top1_agreement < 0.5


def test_export_leaves_global_logging_and_warnings_alone():
    """Trials export in parallel threads: nothing may flip the root logger, and importing the
    export (or quantizing) must not configure logging or warning filters."""
    code = textwrap.dedent("""
        import logging, warnings
        import numpy, onnx, onnxruntime, torch  # their own import-time settings are theirs
        before = (logging.root.level, list(logging.root.handlers), list(warnings.filters))
        import hwnas.export.onnx, hwnas.export.precision, hwnas.export.fp16
        assert (logging.root.level, list(logging.root.handlers), list(warnings.filters)) == before
        import numpy as np, torch
        from pathlib import Path
        import tempfile
        from hwnas.export.onnx import build_onnx, precision_units
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(8 * 6 * 6, 4)).eval()
        units = precision_units(net, {}, "layer")
        data = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
        with tempfile.TemporaryDirectory() as folder:
            for plan, method in (({"0": "int8", "3": "a16w8"}, "minmax"),
                                 ({"0": "int8", "3": "int8"}, "entropy"),
                                 ({"0": "a16w8", "3": "int8"}, "percentile"),
                                 ({"0": "fp16", "3": "int8_weight_only"}, "minmax")):
                build_onnx(net, (3, 8, 8), plan, units, data, Path(folder) / "m.onnx",
                           calibration_method=method)
        # onnxruntime.quantization logs through the root logger, whose first use installs a
        # stderr handler (logging.basicConfig): none installed means none was called
        assert logging.root.handlers == [] and logging.root.level == logging.WARNING
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING:root" not in done.stderr and done.stdout == ""
