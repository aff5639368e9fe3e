"""A model made of several files, end to end: a real ONNX model saved with external data
(onnx.save(save_as_external_data=True)), shipped by AgentClient.ensure_files to a real agent,
verified file by file, loaded and measured; on the newest onnxruntime and on the oldest the
agent allows. And what a hostile client sends instead: every file checked, nothing stored."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from pathlib import Path

import pytest

from hwnas_agent.manifest import MAX_FILES, parse
from hwnas_agent.protocol import AUTH_HEADER, MeasureRequest

from hwnas.errors import MeasurementError

from tests.agent.test_external_data_attack import PYTHONS, leaking_model

FAST = {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 5, "min_seconds": 0.0,
        "rounds": 1}


@pytest.fixture(params=PYTHONS)
def agent(request, tmp_path):
    from hwnas.remote.local import LocalAgentProcess

    process = LocalAgentProcess(tmp_path / "state", python=request.param)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture()
def external_model(tmp_path) -> Path:
    from hwnas.testing.models import matmul_onnx

    folder = tmp_path / "exported"
    folder.mkdir()
    matmul_onnx(folder / "net.onnx", 0.05, external_data="net.onnx.data")
    assert (folder / "net.onnx.data").stat().st_size > (folder / "net.onnx").stat().st_size
    return folder


def call(agent, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=120)
    try:
        connection.request(method, path, body=body,
                           headers={AUTH_HEADER: f"Bearer {agent.token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def upload(agent, files: dict[str, bytes], model: str, manifest: dict | None = None,
           sha256: str | None = None, drop: str | None = None) -> tuple[int, dict]:
    """PUT /v1/models/<sha>/files as a client would, or as a hostile one: another manifest,
    another address, a file left out of the body."""
    if manifest is None:
        manifest = {"model": model, "files": [
            {"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
            for p, b in sorted(files.items())]}
    line = json.dumps(manifest).encode() + b"\n"
    if sha256 is None:  # the canonical JSON's hash, computed here: a hostile one has no Manifest
        canonical = dict(manifest, files=sorted(manifest["files"], key=lambda e: e["path"]))
        sha256 = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":"))
                                .encode()).hexdigest()
    body = line + b"".join(b for p, b in sorted(files.items()) if p != drop)
    return call(agent, "PUT", f"/v1/models/{sha256}/files", body)


def stored_names(agent) -> list[str]:
    return sorted(os.listdir(agent.state_dir / "models"))


def test_a_model_with_external_data_is_shipped_verified_and_measured(agent, external_model):
    client = agent.client("test-agent")
    sha256 = client.ensure_files(external_model, "net.onnx")
    assert sha256 == parse(json.loads(_manifest_of(external_model))).sha256
    folder = agent.state_dir / "models" / f"{sha256}.d"
    assert sorted(os.listdir(folder)) == ["net.onnx", "net.onnx.data"]
    sent = (external_model / "net.onnx.data").read_bytes()
    assert (folder / "net.onnx.data").read_bytes() == sent
    status, meta = call(agent, "GET", f"/v1/models/{sha256}")
    assert status == 200 and meta["manifest"]["model"] == "net.onnx"
    assert meta["size_bytes"] == sum(p.stat().st_size for p in external_model.iterdir())
    assert meta["inputs"][0]["name"] == "x"
    assert client.ensure_files(external_model, "net.onnx") == sha256  # held: not sent again
    measurement = client.measure(MeasureRequest.from_dict(dict(FAST, model_sha256=sha256)))
    assert measurement.model_sha256 == sha256 and measurement.iterations >= 5
    assert measurement.latency_ms_p50 > 0


def _manifest_of(folder: Path) -> bytes:
    from hwnas_agent.manifest import from_folder

    return from_folder(str(folder), "net.onnx").canonical()


def test_a_file_that_is_not_what_the_manifest_says_stores_nothing(agent, external_model):
    files = {p.name: p.read_bytes() for p in external_model.iterdir()}
    good = json.loads(_manifest_of(external_model))
    lying = dict(good, files=[dict(e, sha256=hashlib.sha256(b"other").hexdigest())
                              if e["path"] == "net.onnx.data" else e for e in good["files"]])
    status, payload = upload(agent, files, "net.onnx", manifest=lying)
    assert status == 422 and payload["error"]["code"] == "sha256_mismatch", payload
    assert "'net.onnx.data' hashes to" in payload["error"]["message"]
    status, payload = upload(agent, files, "net.onnx", sha256="0" * 64)
    assert status == 422 and "the manifest hashes to" in payload["error"]["message"], payload
    status, payload = upload(agent, files, "net.onnx", drop="net.onnx.data")
    assert status == 400 and payload["error"]["code"] == "bad_length", payload
    assert stored_names(agent) == []


@pytest.mark.parametrize("manifest, message", [
    ({"model": "../net.onnx", "files": [{"path": "../net.onnx", "sha256": "a" * 64,
                                         "size": 1}]}, "climbs out of the model's folder"),
    ({"model": "/tmp/x", "files": [{"path": "/tmp/x", "sha256": "a" * 64, "size": 1}]},
     "is absolute"),
    ({"model": "m0", "files": [{"path": f"m{i}", "sha256": "a" * 64, "size": 1}
                               for i in range(MAX_FILES + 1)]}, f"at most {MAX_FILES}"),
])
def test_hostile_manifests_are_refused_before_any_byte_is_stored(agent, manifest, message):
    files = {e["path"]: b"x" for e in manifest["files"]}
    status, payload = upload(agent, files, manifest["model"], manifest=manifest)
    assert status == 422 and payload["error"]["code"] == "bad_manifest", payload
    assert message in payload["error"]["message"]
    assert stored_names(agent) == []


@pytest.mark.parametrize("location", ["../../token", "../../agent.json", "other.bin"])
def test_external_data_outside_the_manifest_is_refused(agent, location):
    """The manifest's folder is the model's: not the token, the configuration, a neighbour."""
    secret = (agent.state_dir / "token").read_bytes()
    status, payload = upload(agent, {"net.onnx": leaking_model(location, len(secret)),
                                     "weights.bin": b"\0" * 64}, "net.onnx")
    assert status == 422 and location in payload["error"]["message"], payload
    assert "refused" in payload["error"]["message"]
    assert secret.decode().strip() not in json.dumps(payload)
    assert stored_names(agent) == []


def test_a_stored_data_file_swapped_for_a_link_fails_its_job(agent, external_model):
    """Checked again before a runtime opens it: a link put into the store afterwards (by hand,
    or an older agent) is refused, and its target stays home."""
    client = agent.client("test-agent")
    sha256 = client.ensure_files(external_model, "net.onnx")
    data = agent.state_dir / "models" / f"{sha256}.d" / "net.onnx.data"
    data.unlink()
    data.symlink_to(agent.state_dir / "token")
    with pytest.raises(MeasurementError, match="symbolic link"):
        client.measure(MeasureRequest.from_dict(dict(FAST, model_sha256=sha256)))


def test_a_single_file_model_still_travels_as_before(agent, tmp_path):
    from hwnas.records import Artifact
    from hwnas.testing.models import matmul_onnx

    path = matmul_onnx(tmp_path / "one.onnx", 0.01)
    artifact = Artifact.from_file(path, {}, 0)
    client = agent.client("test-agent")
    assert client.ensure_model(artifact) is True
    assert stored_names(agent) == sorted([f"{artifact.sha256}.json", f"{artifact.sha256}.onnx"])
    measurement = client.measure(MeasureRequest.from_dict(dict(FAST, model_sha256=artifact.sha256)))
    assert measurement.iterations >= 5
