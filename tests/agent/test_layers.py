"""A layer profile (measurement.layer_profile): per-node time from onnxruntime's profiler, in
profiled runs after the timed ones, through the real worker, here and on the oldest
onnxruntime the agent allows (.venv-py38). The model has one node far heavier than the rest:
it must come out on top with most of the time."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwnas_agent.protocol import MeasureRequest, ProtocolError, read_result

from tests.conftest import REPO

PY38 = REPO / ".venv-py38" / "bin" / "python"
SHA = "c" * 64
FAST = {"warmup_iterations": 2, "warmup_seconds": 0.0, "min_iterations": 20,
        "min_seconds": 0.0, "rounds": 2}
HEAVY = "/heavy/MatMul"


def heavy_light_onnx(path: Path) -> Path:
    """x[1,512] -> MatMul 512x2048 (heavy: 1M MACs) -> Relu -> MatMul 2048x8 -> Add."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (512, 2048)), ("w2", (2048, 8)), ("b2", (8,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name=HEAVY),
             helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="/light/MatMul"),
             helper.make_node("Add", ["m", "b2"], ["y"], name="/light/Add")]
    graph = helper.make_graph(nodes, "heavy-light",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the oldest onnxruntime the agent allows loads it too
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return heavy_light_onnx(tmp_path_factory.mktemp("layers") / "heavy.onnx")


def request(**settings) -> MeasureRequest:
    return MeasureRequest.from_dict(dict({"model_sha256": SHA}, **FAST, **settings))


def test_the_setting_is_off_by_default_in_the_measurement_section_and_checked():
    assert request().layer_profile is False and request().layer_profile_runs == 20
    on = MeasureRequest.from_sections(SHA, {"measurement": {"layer_profile": True,
                                                            "layer_profile_runs": 5}})
    assert on.layer_profile is True and on.layer_profile_runs == 5
    with pytest.raises(ProtocolError, match="'layer_profile' = 'yes' is not allowed; expected "
                                            "true or false"):
        request(layer_profile="yes")
    with pytest.raises(ProtocolError, match="'layer_profile_runs' = 0 .* an integer 1..10000"):
        request(layer_profile_runs=0)


def check_profile(layers, runs):
    assert layers["source"] == "onnxruntime profiler" and layers["runs"] == runs
    nodes = layers["nodes"]
    assert nodes[0]["name"] == HEAVY and nodes[0]["op_type"] == "MatMul"
    assert nodes[0]["provider"] == "CPUExecutionProvider"
    assert nodes[0]["share"] > 0.5, nodes
    assert abs(sum(n["share"] for n in nodes) - 1.0) < 1e-6
    assert [n["median_us"] for n in nodes] == sorted((n["median_us"] for n in nodes), reverse=True)
    assert layers["nodes_total"] == len(nodes) >= 2
    # the profiled runs are timed apart from the headline, which is reported beside them
    assert layers["profiled_run_ms_p50"] > 0 and layers["headline_ms_p50"] > 0
    assert layers["profiler_overhead"] == pytest.approx(
        layers["profiled_run_ms_p50"] / layers["headline_ms_p50"] - 1.0)


def profile_folders() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hwnas-ort-layers-*")}


def test_the_worker_reports_each_nodes_median_time_and_share(model_path):
    from hwnas_agent.worker import measure_file

    from hwnas.records import Measurement

    before = profile_folders()
    result = json.loads(json.dumps(measure_file(
        str(model_path), request(layer_profile=True, layer_profile_runs=7))))
    check_profile(result["layers"], 7)
    assert profile_folders() == before  # the profile file is deleted
    measurement = Measurement.from_agent("here", result)
    assert measurement.layers["nodes"][0]["name"] == HEAVY
    # the headline is the timed rounds', measured as without the profile
    assert result["layers"]["headline_ms_p50"] == result["latency_ms"]["p50"]
    plain = measure_file(str(model_path), request())
    assert "layers" not in plain and read_result(plain)["layers"] is None
    assert Measurement.from_agent("here", plain).layers is None


PY38_SCRIPT = """
import json, sys
from hwnas_agent.protocol import MeasureRequest
from hwnas_agent.worker import measure_file
request = MeasureRequest.from_dict(dict(json.loads(sys.argv[2]), model_sha256="c" * 64))
print(json.dumps(measure_file(sys.argv[1], request)))
"""


@pytest.mark.skipif(not PY38.exists(), reason="no .venv-py38 (no Python 3.8 on this machine)")
def test_a_layer_profile_on_the_oldest_onnxruntime(model_path):
    settings = dict(FAST, layer_profile=True, layer_profile_runs=5)
    done = subprocess.run([str(PY38), "-c", PY38_SCRIPT, str(model_path), json.dumps(settings)],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "agents")})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"]["version"].startswith("1.14")
    check_profile(result["layers"], 5)


def test_a_runtime_without_a_layer_profiler_says_so_rather_than_guess():
    from hwnas_agent.runtimes.base import LoadedModel
    from hwnas_agent.runtimes.tensorrt import TensorRTModel

    # TensorRT's own IProfiler is not wired in: the result carries the reason, no figures
    assert TensorRTModel.layer_profile is LoadedModel.layer_profile
    said = TensorRTModel.layer_profile(SimpleNamespace(name="tensorrt"), 20, 1.0)
    assert set(said) == {"error"} and "runtime 'tensorrt' gives no per-layer times" in said["error"]
    assert "runtime onnxruntime" in said["error"]


def test_failed_profiled_runs_cost_the_layer_profile_not_the_measurement():
    from hwnas_agent.runtimes.base import LoadedModel
    from hwnas_agent.worker import _layer_profile

    class NoSecondSession(LoadedModel):  # e.g. no memory left for the profiled session
        def run_once(self) -> None:
            pass

        def node_assignment(self):
            return None

        def describe(self):
            return {}

        def layer_profile(self, runs, headline_p50_ms):
            raise MemoryError("Failed to allocate memory for the profiled session")

    said = _layer_profile(NoSecondSession(), request(layer_profile=True),
                          {"latency_ms": {"p50": 1.0}})
    assert set(said) == {"error"}
    assert said["error"].startswith("the profiled runs failed, the measurement stands: ")
    assert "Failed to allocate memory" in said["error"]
