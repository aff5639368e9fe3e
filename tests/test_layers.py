"""Per-layer time on the device, mapped to the model's units (hwnas/layers.py): `hwnas
profile --layers` through the real local agent, and a model hwnas exported mapped through its
own unit -> node map. The models have one layer far heavier than the rest: it must come out
on top with most of the time."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hwnas.layers import layers_table, module_path, unit_times
from tests.conftest import FAST_DEVICE, export_onnx

HWNAS = str(Path(sys.executable).parent / "hwnas")


class HeavyMiddle(nn.Module):
    """stem (0.2M MACs) -> heavy (28M MACs) -> pool -> head. Heavy enough that in int8 too
    (a QLinearConv, ~4x faster than the float one here) it takes most of the time: at 9.4M
    MACs its int8 share fell to 43% beside the pool and the Q/DQ around it on a busy VM."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.heavy = nn.Conv2d(8, 384, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(384, 10)

    def forward(self, x):
        x = self.act(self.heavy(self.act(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def heavy_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(HeavyMiddle(), (3, 32, 32), tmp_path_factory.mktemp("heavy") / "heavy.onnx")


@pytest.mark.parametrize("name, path", [
    ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
    ("/features/features.3/conv/conv.0/conv.0.0/Conv", "features.3.conv.0.0"),
    ("/layer1/layer1.0/relu_1/Relu_output_0_QuantizeLinear", "layer1.0.relu_1"),
    ("/Flatten", None), ("fc.weight_DequantizeLinear", None), ("ReorderOutput", None),
])
def test_module_paths_are_read_from_torchscript_node_names(name, path):
    assert module_path(name) == path


def test_profile_layers_puts_the_heavy_layer_on_top_side_by_side(heavy_onnx, tmp_path):
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    done = subprocess.run([HWNAS, "profile", str(heavy_onnx), "--device", str(device),
                           "--precision", "int8", "--layers", "--top", "3", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert [r["precision"] for r in rows] == ["as given", "int8"]
    for row in rows:
        units = row["layers"]["units"]
        assert units[0]["unit"] == "heavy" and units[0]["share"] > 0.5, units
        assert abs(sum(u["share"] for u in units) - 1.0) < 1e-6
        assert row["layers"]["op_types"][0]["unit"] in ("Conv", "QLinearConv")
        agent = row["measurement"]["layers"]  # the agent's per-node figures, as sent
        assert agent["runs"] == 20 and agent["profiled_run_ms_p50"] > 0
        assert agent["headline_ms_p50"] == row["measurement"]["latency_ms"]["p50"]
    # the fused stem Conv + Relu (named after the Relu's output) is the stem's, not act's
    assert "act" not in {u["unit"] for u in rows[0]["layers"]["units"]}
    text = subprocess.run([HWNAS, "profile", str(heavy_onnx), "--device", str(device),
                           "--precision", "int8", "--layers", "--top", "3"],
                          capture_output=True, text=True, timeout=600)
    assert text.returncode == 0, text.stderr[-3000:]
    lines = text.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("unit "))
    assert "heavy.onnx as given us / share" in lines[header]
    assert "heavy.onnx int8 us / share" in lines[header]
    assert lines[header + 2].split()[0] == "heavy"
    assert sum(1 for line in lines if "median of 20 profiled runs; a profiled run took" in line) == 2


def test_top_must_be_positive(heavy_onnx):
    done = subprocess.run([HWNAS, "profile", str(heavy_onnx), "--layers", "--top", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--top 0: give how many units to show" in done.stderr


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_an_exported_model_maps_through_its_unit_to_node_map(tmp_path, precision):
    """hwnas's own export: stages as units, int8 Q/DQ nodes followed into them; fp16 islands
    too, which onnxruntime's CPU runs in fp32 behind casts it inserts (and a convolution it
    then names after such a cast's tensor: InsertedPrecisionFreeCast_<tensor>_nchwc)."""
    from hwnas_agent.protocol import MeasureRequest
    from hwnas_agent.worker import measure_file

    from hwnas.export.onnx import build_onnx, precision_units

    torch.manual_seed(0)
    model = HeavyMiddle().eval()
    units = precision_units(model, {"early": [model.stem], "middle": [model.heavy]}, "stage")
    calibration = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    exported = build_onnx(model, (3, 32, 32), {"early": precision, "middle": precision,
                                               "head": "fp32"},
                          units, calibration, tmp_path / "candidate.onnx")
    request = MeasureRequest.from_dict({
        "model_sha256": "d" * 64, "warmup_iterations": 2, "warmup_seconds": 0.0,
        "min_iterations": 10, "min_seconds": 0.0, "rounds": 1, "layer_profile": True,
        "layer_profile_runs": 10})
    layers = measure_file(str(exported.path), request)["layers"]
    graph = onnx.load(str(exported.path)).graph
    found = unit_times(layers, dict(exported.node_units), graph)
    assert found[0].unit == "middle" and found[0].share > 0.5, found
    mapped = {u.unit for u in found}
    # every timed node of the graph lands in a unit; only nodes onnxruntime adds, grouped
    # by op type in parentheses, may not
    assert {"early", "middle"} <= mapped
    assert all(u in ("early", "middle", "head") or u.startswith("(") for u in mapped), mapped
    assert "(Conv)" not in mapped, found  # every convolution is one of the model's


def test_a_runtime_without_per_layer_times_is_said_so():
    said = layers_table([("m.onnx as given", {"error": "runtime 'tensorrt' gives no per-layer "
                                                        "times"}, ())], 5)
    assert said == "m.onnx as given: no per-layer times: runtime 'tensorrt' gives no per-layer times"


def _times(**shares):
    from hwnas.layers import UnitTime

    return [UnitTime(unit, share * 1000, share, 1, ("Conv",))
            for unit, share in sorted(shares.items(), key=lambda kv: -kv[1])]


PROFILED = {"runs": 20, "profiled_run_ms_p50": 1.1, "headline_ms_p50": 1.0,
            "profiler_overhead": 0.1}


def test_side_by_side_shows_every_columns_top_units_else_a_block_each():
    fp32 = _times(a=0.5, b=0.3, c=0.15, d=0.05)
    int8 = _times(d=0.6, c=0.2, b=0.1, a=0.1)
    text = layers_table([("m fp32", PROFILED, fp32), ("m int8", PROFILED, int8)], 1).splitlines()
    assert text[0].split()[0] == "unit" and "m fp32 us / share" in text[0]
    assert [line.split()[0] for line in text[2:4]] == ["d", "a"]  # each column's top one
    assert text[2].split()[1:] == ["50.0", "/", "5.0%", "600.0", "/", "60.0%"]
    assert text[4] == ("m fp32: median of 20 profiled runs; a profiled run took 1.100 ms (p50) "
                       "against the headline p50 of 1.000 ms (+10%)")
    other = _times(x=0.9, y=0.1)
    text = layers_table([("m fp32", PROFILED, fp32), ("n fp32", PROFILED, other)], 2)
    assert text.splitlines()[0].startswith("m fp32 (median of 20 profiled runs")
    assert "\nn fp32 (median of 20" in text and "x  " in text


def test_layers_of_a_generating_folder_are_refused_saying_what_to_give(tmp_path):
    folder = tmp_path / "genai-out"
    folder.mkdir()
    done = subprocess.run([HWNAS, "profile", str(folder), "--layers"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--layers: per-layer times are for ONNX files" in done.stderr
    assert "a model folder is measured generating and has none: leave out --layers" in done.stderr


def test_a_dynamo_export_maps_by_its_name_scopes(tmp_path):
    """torch.onnx's dynamo exporter names nodes node_Conv_3 and keeps the module path in
    metadata: the heavy layer still comes out on top, under its module's name."""
    from hwnas_agent.protocol import MeasureRequest
    from hwnas_agent.worker import measure_file

    from hwnas.layers import module_units

    torch.manual_seed(0)
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(HeavyMiddle().eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                      input_names=["input"], dynamo=True, verbose=False)
    request = MeasureRequest.from_dict({
        "model_sha256": "e" * 64, "warmup_iterations": 2, "warmup_seconds": 0.0,
        "min_iterations": 10, "min_seconds": 0.0, "rounds": 1, "layer_profile": True,
        "layer_profile_runs": 10})
    layers = measure_file(str(path), request)["layers"]
    graph = onnx.load(str(path)).graph
    assert not any(n.name.startswith("/") for n in graph.node)  # no scopes in the names
    found = unit_times(layers, module_units(graph), graph)
    assert found[0].unit == "heavy" and found[0].share > 0.5, found
    assert "stem" in {u.unit for u in found}
