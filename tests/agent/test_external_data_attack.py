"""A model never reads a file outside itself: the external-data attack on the real agent.

An uploaded model whose initializer says ``data_location=EXTERNAL, location=../token`` made
onnxruntime 1.14-1.16 read the agent's token; Cast turned its bytes into a Reshape shape and the
job's error text carried them back ("requested shape:{53,99,...}"). The agent must refuse such a
model itself, whatever onnxruntime the device has, so these tests run the real agent on the
oldest onnxruntime it allows (.venv-py38, see scripts/setup.sh) as well as on the newest.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from hwnas_agent.protocol import AUTH_HEADER

from tests.conftest import REPO

PY38 = REPO / ".venv-py38" / "bin" / "python"
AGENT_FLOOR = next(d for d in tomllib.loads((REPO / "agents" / "pyproject.toml").read_text())
                   ["project"]["dependencies"] if d.startswith("onnxruntime"))
FLOOR_VERSION = AGENT_FLOOR.split(">=")[1].strip()  # "1.14": the oldest release is 1.14.0

PYTHONS = [pytest.param(str(PY38), id="oldest-onnxruntime",
                        marks=pytest.mark.skipif(not PY38.exists(), reason="no .venv-py38 (no "
                                                 "Python 3.8 on this machine)")),
           pytest.param(sys.executable, id="newest-onnxruntime")]


def ort_version(python: str) -> str:
    return subprocess.run([python, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def leaking_model(location: str, length: int, offset: int = 0) -> bytes:
    """x (float, 1 element) reshaped to the bytes of an external file: onnxruntime's error
    names the requested shape, so the file's bytes come back in the error text."""
    from onnx import TensorProto, helper

    secret = TensorProto(name="secret", data_type=TensorProto.UINT8, dims=[length],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = secret.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Cast", ["secret"], ["shape"], to=TensorProto.INT64, name="to_shape"),
         helper.make_node("Reshape", ["x", "shape"], ["y"], name="leak")],
        "leak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[secret])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnxruntime 1.14 reads IR <= 8
    return model.SerializeToString()


def reshape_error_model(shape: list[int]) -> bytes:
    """A model that fails at run time with the values of an (embedded) tensor in the error."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")],
        "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


class Wire:
    """Raw HTTP to the agent; keeps every answer's body, as a client on the wire sees it."""

    def __init__(self, process) -> None:
        self.process = process
        self.bodies: list[bytes] = []

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.process.port, timeout=180)
        try:
            connection.request(method, path, body=body,
                               headers={AUTH_HEADER: f"Bearer {self.process.token}"})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        self.bodies.append(data)
        return response.status, json.loads(data)

    def upload(self, data: bytes) -> tuple[int, dict]:
        return self.call("PUT", f"/v1/models/{hashlib.sha256(data).hexdigest()}", data)

    def run_job(self, sha256: str) -> dict:
        status, record = self.call("POST", "/v1/jobs", json.dumps(
            {"model_sha256": sha256, "min_iterations": 1, "min_seconds": 0.0,
             "warmup_seconds": 0.0, "warmup_iterations": 0, "rounds": 1}).encode())
        assert status == 202, record
        deadline = time.monotonic() + 120
        while record["state"] not in ("done", "failed", "interrupted"):
            assert time.monotonic() < deadline, record
            status, record = self.call("GET", f"/v1/jobs/{record['job_id']}?wait=20")
        return record


def secret_forms(secret: bytes) -> list[str]:
    """How a file's bytes can show up in text: as itself, and as the numbers onnxruntime
    prints for a shape made of them (53,99,... and 53, 99, ...)."""
    numbers = [str(b) for b in secret[:6]]
    return [secret[:16].decode("latin-1"), ",".join(numbers), ", ".join(numbers)]


def assert_nothing_leaked(wire: Wire, secret: bytes) -> None:
    text = b"\n".join(wire.bodies).decode("utf-8", "replace")
    for form in secret_forms(secret):
        assert form not in text, f"{form!r} went over the wire:\n{text}"


@pytest.fixture(params=PYTHONS)
def agent(request, tmp_path):
    from hwnas.remote.local import LocalAgentProcess

    python = request.param
    if python == str(PY38):
        # the floor environment: the test means nothing on a newer onnxruntime
        version = ort_version(python)
        assert version.startswith(FLOOR_VERSION + "."), (
            f".venv-py38 has onnxruntime {version}, not the oldest the agent allows "
            f"({AGENT_FLOOR}): run scripts/setup.sh")
    process = LocalAgentProcess(tmp_path / "state", python=python)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("target", ["../token", "/etc/passwd", "../agent.json"])
def test_upload_reading_a_file_outside_the_model_is_refused(agent, target):
    secret_path = Path("/etc/passwd") if target.startswith("/") else agent.state_dir / target[3:]
    secret = secret_path.read_bytes()[:32]
    wire = Wire(agent)
    status, payload = wire.upload(leaking_model(target, len(secret)))
    assert status == 422, payload
    message = payload["error"]["message"]
    # one clear refusal that names the tensor and the location it asked for
    assert "'secret'" in message and target in message, message
    assert "refused" in message, message
    assert_nothing_leaked(wire, secret)


def test_upload_reading_another_stored_model_is_refused(agent, tmp_path):
    """The store keeps every model as one file in one folder: a neighbour is not the model's."""
    from hwnas.testing.models import matmul_onnx

    wire = Wire(agent)
    neighbour = matmul_onnx(tmp_path / "neighbour.onnx", 0.01).read_bytes()
    status, _ = wire.upload(neighbour)
    assert status == 201
    name = hashlib.sha256(neighbour).hexdigest() + ".onnx"
    status, payload = wire.upload(leaking_model(name, 16))
    assert status == 422 and name in payload["error"]["message"], payload
    signature = hashlib.sha256(neighbour).hexdigest() + ".json"
    status, payload = wire.upload(leaking_model(signature, 16))
    assert status == 422, payload


def test_a_stored_model_that_reads_the_token_fails_its_job_without_the_token(agent):
    """A model already in the store (kept by an agent from before this check) is checked again
    before any runtime opens it: its job fails with the refusal, and the token stays home."""
    secret = (agent.state_dir / "token").read_bytes()
    data = leaking_model("../token", len(secret))
    sha256 = hashlib.sha256(data).hexdigest()
    models = agent.state_dir / "models"
    (models / f"{sha256}.onnx").write_bytes(data)
    (models / f"{sha256}.json").write_text(json.dumps({"sha256": sha256, "inputs": []}))
    wire = Wire(agent)
    record = wire.run_job(sha256)
    assert record["state"] == "failed"
    assert "'secret'" in record["error"] and "../token" in record["error"], record
    assert_nothing_leaked(wire, secret)


def test_runtime_errors_on_the_wire_carry_no_tensor_values(agent):
    """onnxruntime's own error names the values of the shape tensor; the job's error keeps the
    kind, the node and the message, not the values (the full text stays in the device's log)."""
    values = [53, 99, 102, 51, 97, 57]
    status, meta = Wire(agent).upload(reshape_error_model(values))
    assert status == 201, meta  # (its signature may show them: they are the model's own bytes)
    wire = Wire(agent)
    record = wire.run_job(meta["sha256"])
    assert record["state"] == "failed"
    error = record["error"]
    assert "Reshape" in error and "bad_reshape" in error, error
    assert "requested shape" in error, error  # the message itself is kept
    assert not re.search(r"53\D{1,3}99", error), error
    assert_nothing_leaked(wire, bytes(values))
    log = (agent.state_dir / "jobs" / record["job_id"] / "worker.log").read_text()
    assert "53,99,102" in log  # the device's own log keeps the whole text


def test_one_shot_measure_refuses_a_model_reading_outside_its_folder(tmp_path, capsys):
    from hwnas_agent.cli import main

    (tmp_path / "secret").write_bytes(b"s" * 16)
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "leak.onnx"
    path.write_bytes(leaking_model("../secret", 16))
    assert main(["measure", str(path)]) == 2
    assert "'../secret'" in capsys.readouterr().err
