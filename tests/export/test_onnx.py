"""Precision plans become one QDQ ONNX; accuracy is computed on the exact bytes."""

import onnx
import pytest

from hwnas.config.models import BaseModelSpec, DatasetSpec, TrainSettings
from hwnas.data import load_task
from hwnas.evaluate import onnx_accuracy
from hwnas.export.onnx import build_onnx, node_units, plan_units, precision_units
from hwnas.models import model_stages
from hwnas.records import Artifact
from hwnas.train import load_base_model, torch_accuracy

SPEC = BaseModelSpec(builtin="small_cnn", train=TrainSettings(epochs=8, batch_size=64,
                                                               learning_rate=0.003))


@pytest.fixture(scope="module")
def base():
    task = load_task(DatasetSpec(builtin="digits"))
    model = load_base_model(SPEC, task, log=lambda _: None).module
    return task, model, precision_units(model, model_stages(model, SPEC), "stage")


def build(base, plan, tmp_path, name="m.onnx"):
    task, model, units = base
    exported = build_onnx(model, task.input_shape, plan, units, task.calibration(64), tmp_path / name)
    return Artifact.from_file(exported.path, {}, 0)


def quantized_conv_units(path, units):
    """Units whose Conv/Gemm weights come through a DequantizeLinear (int8)."""
    graph = onnx.load(path).graph
    producers = {out: node for node in graph.node for out in node.output}
    owner = node_units(graph, units)
    found = set()
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight = producers.get(node.input[1])
            if weight is not None and weight.op_type == "DequantizeLinear":
                found.add(owner[node.name])
    return found


def test_units_are_the_stages_and_the_head(base):
    _, _, units = base
    assert plan_units(units) == ["head", "stage1", "stage2", "stage3"]


def test_mixed_plan_quantizes_exactly_the_int8_units(base, tmp_path):
    _, _, units = base
    plan = {"stage1": "int8", "stage2": "fp32", "stage3": "int8", "head": "fp32"}
    artifact = build(base, plan, tmp_path)
    assert quantized_conv_units(artifact.path, units) == {"stage1", "stage3"}


def test_all_fp32_plan_has_no_qdq_and_matches_torch_accuracy(base, tmp_path):
    task, model, units = base
    artifact = build(base, dict.fromkeys(plan_units(units), "fp32"), tmp_path)
    ops = {n.op_type for n in onnx.load(artifact.path).graph.node}
    assert "QuantizeLinear" not in ops
    assert onnx_accuracy(artifact, task.test_x, task.test_y) == pytest.approx(
        torch_accuracy(model, task.test_x, task.test_y), abs=0.003)


def test_int8_model_is_smaller_and_still_accurate(base, tmp_path):
    task, _, units = base
    fp32 = build(base, dict.fromkeys(plan_units(units), "fp32"), tmp_path, "a.onnx")
    int8 = build(base, dict.fromkeys(plan_units(units), "int8"), tmp_path, "b.onnx")
    assert quantized_conv_units(int8.path, units) == set(plan_units(units))
    assert int8.size_bytes < 0.4 * fp32.size_bytes
    assert onnx_accuracy(int8, task.test_x, task.test_y) > 0.9


def test_layer_granularity_names_each_conv_and_linear(base):
    _, model, _ = base
    units = precision_units(model, model_stages(model, SPEC), "layer")
    assert plan_units(units) == ["classifier", "stage1.0", "stage1.3", "stage2.0", "stage2.3",
                                 "stage3.0"]


def test_artifact_detects_changed_bytes(base, tmp_path):
    from hwnas.errors import ExportError

    _, _, units = base
    artifact = build(base, dict.fromkeys(plan_units(units), "fp32"), tmp_path)
    with open(artifact.path, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ExportError, match="sha256 mismatch"):
        artifact.read_bytes()


def test_exports_from_several_threads_at_once(base, tmp_path):
    """Trials on several devices run in threads; torch's exporters share global state."""
    from concurrent.futures import ThreadPoolExecutor

    _, _, units = base
    plans = [dict.fromkeys(plan_units(units), p) for p in ("fp32", "int8", "fp32", "int8")]
    with ThreadPoolExecutor(4) as pool:
        artifacts = list(pool.map(lambda i: build(base, plans[i], tmp_path, f"t{i}.onnx"), range(4)))
    assert len({a.sha256 for a in artifacts}) == 2  # same plan, same bytes
    for artifact in artifacts:
        onnx.checker.check_model(artifact.path)
