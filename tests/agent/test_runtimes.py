"""One contract, every runtime (runtimes/base.py), as the power sources have theirs: open a
model, run once, the timed loop, node assignment, describe. Each runtime named in the protocol
is checked here; one that cannot run on this machine (TensorRT without its package or a GPU,
genai without onnxruntime-genai) skips with its own reason. onnxruntime runs for real, here
and on the oldest onnxruntime the agent allows (.venv-py38); genai opens a real model folder
of onnxruntime-genai's model builder (a tiny Llama, tests/conftest.py genai_folder)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from hwnas_agent import runtimes
from hwnas_agent.protocol import RUNTIMES, MeasureRequest
from hwnas_agent.runtimes import LoadedModel, Runtime, RuntimeUnavailable

from tests.conftest import REPO

PY38 = REPO / ".venv-py38" / "bin" / "python"
SHA = "b" * 64
TIMING = {"warmup_iterations": 2, "warmup_seconds": 0.0, "min_iterations": 12,
          "min_seconds": 0.0, "rounds": 3}


def request_for(name: str, **overrides) -> MeasureRequest:
    settings = dict(TIMING, **GENERATION) if name == "genai" else TIMING
    return MeasureRequest.from_dict(dict({"model_sha256": SHA, "runtime": name}, **settings,
                                         **overrides))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from hwnas.testing.models import matmul_onnx

    return matmul_onnx(tmp_path_factory.mktemp("contract") / "dense.onnx", 0.01)


DENSE_INPUTS = [{"name": "x", "shape": [1, 50], "dtype": "float32"}]
# the genai contract runs short generation rounds on the tiny Llama
GENERATION = {"prompt_tokens": 16, "generate_tokens": 8}
INPUTS = {"genai": [{"name": "input_ids", "shape": [1, 16], "dtype": "int32"}]}


@pytest.fixture(params=RUNTIMES)
def opened(request, model_path, tmp_path):
    runtime = runtimes.runtime(request.param)
    why = runtime.available()
    if why is not None:
        pytest.skip(why)
    path = model_path
    if request.param == "genai":  # a model folder, opened by its ONNX file
        path = request.getfixturevalue("genai_folder") / "model.onnx"
    try:
        model = runtime.open(str(path), request_for(request.param), str(tmp_path))
    except RuntimeUnavailable as exc:  # e.g. TensorRT's package without a GPU
        pytest.skip(str(exc))
    return runtime, model


def test_every_protocol_runtime_has_a_module_that_names_itself():
    modules = {p.stem for p in (REPO / "agents" / "hwnas_agent" / "runtimes").glob("*.py")}
    for name in RUNTIMES:
        assert name in modules
        runtime = runtimes.runtime(name)
        assert isinstance(runtime, Runtime) and runtime.name == name


def test_an_unknown_runtime_is_refused_naming_the_known_ones():
    with pytest.raises(RuntimeUnavailable, match="onnxruntime, tensorrt, genai"):
        runtimes.load("x.onnx", SimpleNamespace(runtime="tflite"))


def test_a_runtime_missing_part_of_the_contract_cannot_be_made():
    class Half(LoadedModel):
        def run_once(self) -> None:
            pass

    with pytest.raises(TypeError, match="describe|node_assignment"):
        Half()


class TestRuntimeContract:
    def test_opens_a_model_with_its_inputs_ready(self, opened):
        runtime, model = opened
        assert isinstance(model, LoadedModel) and model.name == runtime.name
        assert model.inputs == INPUTS.get(runtime.name, DENSE_INPUTS)

    def test_runs_once(self, opened):
        _, model = opened
        model.run_once()
        model.run_once()

    def test_the_timed_loop_honours_the_request(self, opened):
        runtime, model = opened
        rounds = []
        result = model.timed_loop(request_for(runtime.name),
                                  after_round=lambda: rounds.append(1) or {"probe": len(rounds)})
        assert result["iterations"] >= 12 and len(result["rounds"]) == 3 == len(rounds)
        assert result["rounds"][-1]["probe"] == 3
        assert result["warmup_iterations"] == 2
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]

    def test_node_assignment_is_counts_or_none(self, opened):
        runtime, model = opened
        assignment = model.node_assignment()
        if assignment is None:
            return
        assert set(assignment) >= {"counts", "elsewhere", "elsewhere_total"}
        assert sum(assignment["counts"].values()) >= 1
        assert assignment["elsewhere_total"] == len(assignment["elsewhere"]) == 0

    def test_describes_what_ran_it(self, opened):
        runtime, model = opened
        described = model.describe()
        assert described["name"] == runtime.name
        assert isinstance(described["version"], str) and described["version"]
        assert isinstance(described["execution_providers"], list)
        assert described["execution_providers"]
        assert isinstance(described["emulated"], bool)
        json.dumps(described)  # it travels in the result


def test_onnxruntime_refuses_a_provider_this_device_lacks(model_path):
    with pytest.raises(RuntimeUnavailable, match="not available on this device"):
        runtimes.load(str(model_path), request_for(
            "onnxruntime", execution_providers=["NoSuchExecutionProvider"]))


def test_tensorrt_says_what_to_install_when_missing():
    runtime = runtimes.runtime("tensorrt")
    why = runtime.available()
    if why is None:
        pytest.skip("tensorrt is installed here")
    assert "tensorrt Python package" in why
    with pytest.raises(RuntimeUnavailable, match="tensorrt Python package"):
        runtime.open("model.onnx", request_for("tensorrt"))


CONTRACT_SCRIPT = """
import json, sys
from hwnas_agent import runtimes
from hwnas_agent.protocol import MeasureRequest
request = MeasureRequest.from_dict(dict(json.loads(sys.argv[2]), model_sha256="b" * 64))
model = runtimes.load(sys.argv[1], request)
model.run_once()
result = model.timed_loop(request)
print(json.dumps({"inputs": model.inputs, "iterations": result["iterations"],
                  "rounds": len(result["rounds"]), "assignment": model.node_assignment(),
                  "describe": model.describe()}))
"""


@pytest.mark.skipif(not PY38.exists(), reason="no .venv-py38 (no Python 3.8 on this machine)")
def test_the_onnxruntime_contract_holds_on_the_oldest_onnxruntime(model_path):
    done = subprocess.run([str(PY38), "-c", CONTRACT_SCRIPT, str(model_path), json.dumps(TIMING)],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "agents")})
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["inputs"] == [{"name": "x", "shape": [1, 50], "dtype": "float32"}]
    assert found["iterations"] >= 12 and found["rounds"] == 3
    assert found["describe"]["name"] == "onnxruntime"
    assert found["describe"]["version"].startswith("1.14")
    assert found["assignment"] is None or found["assignment"]["elsewhere_total"] == 0


# -- the measurement result: the worker writes what the protocol's schema reads -------------

def test_a_worker_result_meets_the_result_schema_the_controller_reads(model_path):
    from hwnas_agent.protocol import RESULT_FIELDS, read_result
    from hwnas_agent.worker import measure_file

    from hwnas.records import Measurement

    result = json.loads(json.dumps(measure_file(str(model_path), request_for("onnxruntime"))))
    values = read_result(result)
    assert set(values) == set(RESULT_FIELDS)
    assert values["iterations"] == result["iterations"] >= 12
    assert values["latency_ms_p90"] == result["latency_ms"]["p90"]
    assert values["execution_providers"] == ("CPUExecutionProvider",)
    assert values["emulated"] is False and values["power"] is None
    assert values["peak_rss_mb"] > 0
    measurement = Measurement.from_agent("here", result)
    assert measurement.latency_ms_p50 == result["latency_ms"]["p50"]
    assert measurement.latency_ms_p50_ci95 == tuple(result["latency_ms"]["ci95_p50"])


@pytest.mark.parametrize("change, message", [
    (lambda r: r["latency_ms"].pop("p90"), "no 'latency_ms.p90'"),
    (lambda r: r.update(iterations="12"), "'iterations' = '12' is not an integer"),
    (lambda r: r["runtime"].update(execution_providers="CPU"), "is not a list of strings"),
    (lambda r: r["latency_ms"].update(ci95_p50=[1.0]), "is not two numbers"),
])
def test_a_malformed_result_names_the_field(change, message):
    from hwnas_agent.protocol import read_result

    from hwnas.errors import MeasurementError
    from hwnas.records import Measurement

    report = {"model_sha256": SHA, "iterations": 12, "unstable": False,
              "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "std": 0.0,
                             "cv": 0.0, "ci95_p50": [1.0, 1.0]},
              "runtime": {"execution_providers": ["CPUExecutionProvider"]}}
    assert read_result(report)["emulated"] is False
    change(report)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_result(report)
    with pytest.raises(MeasurementError, match="malformed measurement"):
        Measurement.from_agent("here", report)
