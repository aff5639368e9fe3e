"""`hwnas profile`: several models side by side through the real local agent, free input
dimensions fixed by an override, the device profile found from the project."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import FAST_DEVICE, GENAI_DEVICE

HWNAS = str(Path(sys.executable).parent / "hwnas")


def profile(*args, cwd=None):
    return subprocess.run([HWNAS, "profile", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_several_models_side_by_side(models_dir, tmp_path):
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    done = profile(models_dir / "small.onnx", models_dir / "large.onnx", "--device", device)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("on test-local (CPUExecutionProvider)")
    assert lines[1].split()[:5] == ["model", "precision", "MB", "p50", "ms"]
    assert [line.split()[0] for line in lines[3:5]] == ["small.onnx", "large.onnx"]
    rows = json.loads(profile(models_dir / "small.onnx", models_dir / "large.onnx", "--device",
                              device, "--json").stdout)
    assert [r["model"] for r in rows] == ["small.onnx", "large.onnx"]
    small, large = (r["measurement"]["latency_ms"]["p90"] for r in rows)
    assert small < large  # 64 MACs against ~300k: the order is not in doubt
    assert rows[0]["artifact"]["sha256"] != rows[1]["artifact"]["sha256"]


def dynamic_image_model(path: Path) -> Path:
    """A model exported with free height and width, as many are."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 16, 16),), str(path), input_names=["image"],
                      output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}}, dynamo=False)
    return path


def test_free_input_dimensions_need_and_take_an_override(tmp_path):
    model = dynamic_image_model(tmp_path / "dynamic.onnx")
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    refused = profile(model, "--device", device)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "input 'image' has free dimensions at positions [2, 3]" in refused.stderr
    assert "--input-shape" in refused.stderr
    rows = [json.loads(profile(model, "--device", device, "--input-shape", shape,
                               "--json").stdout)[0] for shape in ("1x16x16", "image=1x96x96")]
    assert [r["measurement"]["inputs"][0]["shape"] for r in rows] == \
        [[1, 1, 16, 16], [1, 1, 96, 96]]
    assert rows[0]["measurement"]["latency_ms"]["p50"] < rows[1]["measurement"]["latency_ms"]["p50"]
    wrong = profile(model, "--device", device, "--input-shape", "2x16x16")
    assert wrong.returncode == 2 and "dimension 1 of input 'image' is fixed at 1" in wrong.stderr


def test_default_device_profile_is_found_from_the_project(models_dir, tmp_path):
    project = tmp_path / "project"
    (project / "device_profiles").mkdir(parents=True)
    (project / "device_profiles" / "local.yaml").write_text(FAST_DEVICE)
    deep = project / "experiments" / "today"
    deep.mkdir(parents=True)
    done = profile(models_dir / "small.onnx", cwd=deep)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("on test-local ")  # the project's profile, found upwards
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = profile(models_dir / "small.onnx", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("on local ")  # hwnas's own checkout


def test_precision_variants_made_and_measured_beside_the_model(models_dir, tmp_path):
    # the variants are written by the search's own precision code (hwnas.export.precision)
    pytest.importorskip("hwnas.export.precision")
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    done = profile(models_dir / "large.onnx", "--device", device, "--precision", "int8,fp16")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[3:6]]
    assert [r[:2] for r in rows] == [["large.onnx", "as"], ["large.onnx", "int8"],
                                     ["large.onnx", "fp16"]]
    # MB column ("as given" is two words): int8 weights take under half the bytes
    assert float(rows[1][2]) < 0.5 * float(rows[0][3])
    assert "int8 calibrated on 128 random normal inputs" in done.stdout
    assert "test-local does not list fp16" in done.stdout
    calibrated = tmp_path / "space.yaml"
    calibrated.write_text("name: c\nbase_model: {builtin: small_cnn}\ndataset: {builtin: digits}\n")
    done = profile(models_dir / "large.onnx", "--device", device, "--precision", "int8",
                   "--calibration", calibrated, "--calibration-samples", "64")
    assert done.returncode == 0, done.stderr
    assert f"int8 calibrated on 64 training images of {calibrated} (digits" in done.stdout
    wrong = profile(models_dir / "large.onnx", "--device", device, "--precision", "int4")
    assert wrong.returncode == 2 and "--precision int4: unknown ['int4']; allowed:" in wrong.stderr


def plain_batch_1_export(tmp_path: Path) -> Path:
    """torch.onnx.export with no input_names and no dynamic axes: input 'input.1', batch 1."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).eval()
    path = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    return path


def test_int8_variant_of_a_plain_export_any_input_name_and_a_fixed_batch(tmp_path):
    # torch.onnx.export with no input_names and no dynamic axes: input 'input.1'
    # (TorchScript) or 'x' (dynamo), batch fixed at 1; the calibration data must fit it
    import onnx

    from hwnas.export.precision import realised_precisions
    from hwnas.profile import make_variant

    path = plain_batch_1_export(tmp_path)
    plain = onnx.load(str(path))
    assert plain.graph.input[0].name != "input"
    assert plain.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    calibration = torch.randn(100, 1, 8, 8).numpy()
    variant = make_variant(plain, "int8", calibration)
    assert set(realised_precisions(variant).values()) == {"int8"}
    # what `hwnas rebuild --onnx` reads to judge a reduced-precision export by class agreement
    from hwnas.models.saved import onnx_reduced_precisions

    onnx.save(variant, str(tmp_path / "int8.onnx"))
    assert onnx_reduced_precisions(path) == [] and onnx_reduced_precisions(tmp_path / "int8.onnx") == ["int8"]
    # a variant of a variant is refused, saying what the model holds (before, fp16 written into
    # an fp16 model gave two nodes of one name, refused by onnxruntime on the device)
    from hwnas.errors import ConfigError
    from hwnas.profile import check_float32

    check_float32(plain, path)
    with pytest.raises(ConfigError, match=r"int8.onnx: already holds int8 \(2 of its 2 weighted "
                                          r"nodes below fp32\); --precision makes variants from"):
        check_float32(variant, tmp_path / "int8.onnx")
    onnx.save(make_variant(plain, "fp16", calibration), str(tmp_path / "fp16.onnx"))
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    done = profile(tmp_path / "fp16.onnx", "--device", device, "--precision", "int8,fp16")
    assert done.returncode == 2 and "fp16.onnx: already holds fp16" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_int8_calibration_of_a_batch_1_model_uses_every_sample(tmp_path):
    # 128 samples is `hwnas profile`'s default: fed one by one to a batch-1 model, onnxruntime's
    # CalibMaxIntermediateOutputs (64) used to discard them all ("No data is collected")
    import onnx

    from hwnas.profile import make_variant

    path = plain_batch_1_export(tmp_path)
    plain = onnx.load(str(path))
    name = plain.graph.input[0].name
    quiet = np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)
    loud = quiet.copy()
    loud[0] *= 50  # the first sample alone sets the input's range

    def input_scale(calibration):
        variant = make_variant(plain, "int8", calibration)
        initializers = {t.name: t for t in variant.graph.initializer}
        node = next(n for n in variant.graph.node
                    if n.op_type == "QuantizeLinear" and n.input[0] == name)
        return float(onnx.numpy_helper.to_array(initializers[node.input[1]]))

    assert input_scale(loud) > 10 * input_scale(quiet)




def test_genai_folders_measured_generating_side_by_side(genai_folder, tmp_path):
    """Two onnxruntime-genai folders through the real agent's genai runtime: one table of
    time to first token and tokens/s; the longer the prompt, the longer the first token."""
    import shutil

    device = tmp_path / "genai.yaml"
    device.write_text(GENAI_DEVICE)
    copy = tmp_path / "same-model"
    shutil.copytree(genai_folder, copy)
    done = profile(genai_folder, copy, "--device", device)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("on test-genai (") and "prompt 16 tokens, then 8 greedy" in lines[0]
    assert lines[1].split()[:4] == ["model", "MB", "TTFT", "p50"]
    assert [line.split()[0] for line in lines[3:5]] == [genai_folder.name, "same-model"]
    rows = json.loads(profile(genai_folder, "--device", device, "--json").stdout)
    generation = rows[0]["measurement"]["generation"]  # the agent's report, as it sent it
    assert generation["decode_tokens_per_s"]["p50"] > 0 and generation["prompt_tokens"] == 16
    assert generation["ttft_ms"]["p90"] >= generation["ttft_ms"]["p50"] > 0
    # the folder is addressed by its manifest: the same bytes under another name, one model
    folder_bytes = sum(p.stat().st_size for p in genai_folder.rglob("*") if p.is_file())
    assert rows[0]["artifact"]["size_bytes"] == folder_bytes


def test_a_folder_with_a_per_inference_profile_or_beside_a_file_is_refused(genai_folder,
                                                                          models_dir, tmp_path):
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    done = profile(genai_folder, "--device", device)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "measured generating by the agent's genai runtime" in done.stderr
    assert "runtime: {name: genai}" in done.stderr
    done = profile(genai_folder, models_dir / "small.onnx", "--device", device)
    assert done.returncode == 2 and "not both" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    genai = tmp_path / "genai.yaml"
    genai.write_text(GENAI_DEVICE)
    done = profile(empty, "--device", genai)
    assert done.returncode == 2 and "without genai_config.json" in done.stderr


def _graph(nodes, initializers):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_reduced_precisions_the_plan_reader_does_not_know_are_refused_too():
    """int4 QDQ weights, bf16 weights and QOperator graphs (QLinear*): no weighted node reads
    as int8 or fp16 there, and a variant written into them is of no precision either."""
    from onnx import TensorProto, helper, numpy_helper

    from hwnas.errors import ConfigError
    from hwnas.profile import check_float32

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    check_float32(_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [weight]),
                  Path("fp32.onnx"))
    refused = {
        "int4 weights, quantized operators (DequantizeLinear)": _graph(
            [helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"], name="dq"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")],
            [helper.make_tensor("wq", TensorProto.INT4, [4, 4], [1] * 16), scale]),
        "bf16 weights": _graph(
            [helper.make_node("Cast", ["wb"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")],
            [helper.make_tensor("wb", TensorProto.BFLOAT16, [4, 4], [16256] * 16)]),
        "quantized operators (QLinearMatMul)": _graph(
            [helper.make_node("QLinearMatMul", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"],
                              name="q")], [weight]),
    }
    for what, model in refused.items():
        with pytest.raises(ConfigError, match=rf"^m.onnx: already holds {re.escape(what)}; "):
            check_float32(model, Path("m.onnx"))
