"""The real agent daemon over HTTP: protocol errors are clear 4xx and it keeps serving."""

import hashlib
import http.client
import json
import socket

import pytest

from hwnas_agent.protocol import AUTH_HEADER, PROTOCOL_HEADER

from hwnas.errors import DeviceError, MeasurementError
from hwnas.records import Artifact


def raw(process, method, path, body=None, headers=None, token=True):
    connection = http.client.HTTPConnection("127.0.0.1", process.port, timeout=60)
    headers = dict(headers or {})
    if token:
        headers.setdefault(AUTH_HEADER, f"Bearer {process.token}")
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def auth_line(process):
    return f"{AUTH_HEADER}: Bearer {process.token}\r\n".encode()


def still_serving(process):
    status, payload = raw(process, "GET", "/v1/hello")
    assert status == 200 and payload["agent"] == "hwnas-agent"


def test_hello_reports_versions_and_runtimes(local_agent):
    client, _ = local_agent
    hello = client.hello()
    assert hello["protocol_version"] == 2
    assert "CPUExecutionProvider" in hello["runtimes"]["onnxruntime"]["execution_providers"]


def test_protocol_version_mismatch_is_409_with_advice(local_agent):
    _, process = local_agent
    status, payload = raw(process, "GET", "/v1/hello", headers={PROTOCOL_HEADER: "99"})
    assert status == 409
    assert payload["error"]["code"] == "version_mismatch"
    assert "install matching versions" in payload["error"]["message"]
    still_serving(process)


def test_model_is_uploaded_only_when_missing(local_agent, models_dir):
    client, _ = local_agent
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    assert client.has_model(artifact.sha256) is False
    assert client.ensure_model(artifact) is True
    assert client.has_model(artifact.sha256) is True
    assert client.ensure_model(artifact) is False


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/jobs", b"{not json", 400, "bad_json"),
    ("POST", "/v1/jobs", b'{"model_sha256": "' + b"b" * 64 + b'"}', 404, "unknown_model"),
    ("POST", "/v1/jobs", b'{"model_sha256": "' + b"b" * 64 + b'", "iters": 1}', 400, "unknown_field"),
    ("GET", "/v1/frobnicate", None, 404, "unknown_operation"),
    ("GET", "/etc/passwd", None, 404, "unknown_operation"),
    ("DELETE", "/v1/jobs", None, 405, "method_not_allowed"),
    ("GET", "/v1/jobs/0123abcd", None, 404, "unknown_job"),
    ("GET", "/v1/models/not-a-sha", None, 400, "bad_sha256"),
])
def test_bad_requests_get_clear_4xx_and_the_agent_keeps_serving(local_agent, method, path, body,
                                                                 status, code):
    _, process = local_agent
    got_status, payload = raw(process, method, path, body)
    assert got_status == status
    assert payload["error"]["code"] == code
    assert payload["error"]["message"]
    still_serving(process)


def test_sha256_mismatch_is_refused_and_nothing_stored(local_agent, models_dir):
    client, process = local_agent
    data = (models_dir / "small.onnx").read_bytes()
    wrong = hashlib.sha256(b"something else").hexdigest()
    status, payload = raw(process, "PUT", f"/v1/models/{wrong}", data)
    assert status == 422 and payload["error"]["code"] == "sha256_mismatch"
    assert client.has_model(wrong) is False
    still_serving(process)


def test_corrupt_onnx_is_refused_with_the_runtime_message(local_agent, models_dir):
    client, process = local_agent
    data = (models_dir / "medium.onnx").read_bytes()[:-400] + b"\x00garbage"
    sha = hashlib.sha256(data).hexdigest()
    status, payload = raw(process, "PUT", f"/v1/models/{sha}", data)
    assert status == 422 and payload["error"]["code"] == "invalid_model"
    assert "not a loadable ONNX model" in payload["error"]["message"]
    assert client.has_model(sha) is False
    still_serving(process)


def test_truncated_body_does_not_hang_or_kill_the_agent(local_agent):
    _, process = local_agent
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
        sock.sendall(b"PUT /v1/models/" + b"c" * 64 + b" HTTP/1.1\r\nHost: x\r\n"
                     + auth_line(process) + b"Content-Length: 100000\r\n\r\npartial")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(4096)
    assert b" 400 " in reply.split(b"\r\n")[0]
    still_serving(process)


def test_oversized_body_is_413(local_agent):
    _, process = local_agent
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth_line(process)
                     + b"Content-Length: 99999999999\r\n\r\n")
        reply = sock.recv(4096)
    assert b" 413 " in reply.split(b"\r\n")[0]
    still_serving(process)


def test_measure_job_reports_statistics_and_provenance(local_agent, models_dir):
    from hwnas_agent.protocol import MeasureRequest

    client, _ = local_agent
    artifact = Artifact.from_file(models_dir / "medium.onnx", {}, 0)
    client.ensure_model(artifact)
    request = MeasureRequest(model_sha256=artifact.sha256, warmup_iterations=5, warmup_seconds=0.05,
                             min_iterations=60, min_seconds=0.2, rounds=3)
    measurement = client.measure(request)
    assert measurement.model_sha256 == artifact.sha256
    assert measurement.iterations >= 60
    assert 0 < measurement.latency_ms_p50 <= measurement.latency_ms_p90 <= measurement.latency_ms_p99
    low, high = measurement.latency_ms_p50_ci95
    assert low <= measurement.latency_ms_p50 <= high
    report = measurement.agent_report
    assert report["runtime"]["execution_providers"] == ["CPUExecutionProvider"]
    assert report["runtime"]["intra_op_threads"] == 1
    assert len(report["rounds"]) == 3
    assert report["provenance"]["before"]["agent_version"]
    assert report["timed_seconds"] >= 0.2


def test_unavailable_execution_provider_fails_the_job_not_the_agent(local_agent, models_dir):
    from hwnas_agent.protocol import MeasureRequest

    client, process = local_agent
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    client.ensure_model(artifact)
    request = MeasureRequest(model_sha256=artifact.sha256,
                             execution_providers=["NoSuchExecutionProvider"])
    with pytest.raises(MeasurementError, match="not available on this device"):
        client.measure(request)
    still_serving(process)


def test_finished_results_survive_an_agent_restart(tmp_path, models_dir):
    from hwnas_agent.protocol import MeasureRequest

    from hwnas.remote.local import LocalAgentProcess

    state = tmp_path / "state"
    first = LocalAgentProcess(state)
    first.start()
    client = first.client("restart")
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    client.ensure_model(artifact)
    job_id = client.submit(MeasureRequest(model_sha256=artifact.sha256, min_seconds=0.05,
                                          min_iterations=10, warmup_seconds=0.0))
    done = client.wait(job_id, 60)
    first.stop()
    second = LocalAgentProcess(state)
    second.start()
    client = second.client("restart")
    try:
        again = client.job(job_id)
        assert again["state"] == "done"
        assert again["measurement"]["latency_ms"] == done["measurement"]["latency_ms"]
        assert client.has_model(artifact.sha256)
    finally:
        second.stop()


def test_client_error_when_no_agent_listens():
    from hwnas.remote.client import AgentClient
    from hwnas.remote.transport import LoopbackTransport

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeviceError, match="is the agent running"):
        AgentClient(LoopbackTransport(port), "nowhere").hello()


def test_agent_refuses_non_loopback_address_by_default():
    from hwnas_agent.server import check_host

    check_host("127.0.0.1", allow_remote=False)
    check_host("::1", allow_remote=False)
    with pytest.raises(SystemExit, match="127.0.0.1 only"):
        check_host("0.0.0.0", allow_remote=False)


def configured_agent(tmp_path, sources):
    from hwnas.remote.local import LocalAgentProcess

    process = LocalAgentProcess(tmp_path / "configured", power_sources=sources)
    process.start()
    return process


def test_measure_job_samples_power_and_extends_the_timed_phase(models_dir, tmp_path):
    from hwnas_agent.protocol import MeasureRequest

    from tests.agent import power_fixtures as fx

    watts = fx.ina219_hwmon(tmp_path)  # a Pi 4's INA219 meter, 10 Hz
    process = configured_agent(tmp_path, {"hwmon": {"kind": "hwmon",
                                                    "options": {"sysfs_root": str(tmp_path)}}})
    client = process.client("power")
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    client.ensure_model(artifact)
    request = MeasureRequest(model_sha256=artifact.sha256, warmup_seconds=0.0, min_iterations=10,
                             min_seconds=0.05, rounds=2, power_source="hwmon", idle_seconds=0.3)
    try:
        measurement = client.measure(request)
    finally:
        process.stop()
    report = measurement.agent_report
    assert report["power"]["samples"] >= 20  # 0.05 s asked; extended to get 20 samples at 10 Hz
    assert report["timed_seconds"] >= 1.5 and len(report["rounds"]) > 2
    assert measurement.power_mean_w == pytest.approx(watts)
    assert report["power"]["idle_w"] == pytest.approx(watts)
    expected = watts * report["timed_seconds"] / report["iterations"] * 1000
    assert measurement.energy_mj_per_inference == pytest.approx(expected)
    assert report["power"]["covers"].startswith("hwmon meter 'ina219'")


def test_missing_power_sensor_fails_the_job_with_its_reason(models_dir, tmp_path):
    from hwnas_agent.protocol import MeasureRequest

    process = configured_agent(tmp_path, {"ina3221": {"kind": "ina3221",
                                                      "options": {"sysfs_root": str(tmp_path)}}})
    client = process.client("power")
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    client.ensure_model(artifact)
    try:
        with pytest.raises(MeasurementError, match="no INA3221 found"):
            client.measure(MeasureRequest(model_sha256=artifact.sha256, power_source="ina3221"))
    finally:
        process.stop()


# --- the wire carries data, never commands; no token, no service ------------------------------


@pytest.mark.parametrize("method, path", [("GET", "/v1/hello"), ("GET", "/v1/facts"),
                                          ("GET", "/v1/models/" + "a" * 64),
                                          ("PUT", "/v1/models/" + "a" * 64),
                                          ("POST", "/v1/jobs"), ("GET", "/v1/jobs/abc")])
def test_no_token_no_service(local_agent, method, path):
    _, process = local_agent
    for headers in ({}, {AUTH_HEADER: "Bearer " + "0" * 64}, {AUTH_HEADER: process.token},
                    {AUTH_HEADER: "Bearer " + process.token[:-1]}):
        status, payload = raw(process, method, path, b"{}" if method != "GET" else None,
                              headers=headers, token=False)
        assert status == 401, headers
        assert payload["error"]["code"] == "unauthorized" and payload["agent"] == "hwnas-agent"
        assert "token" in payload["error"]["message"]
    still_serving(process)


def test_a_client_without_the_token_is_told_how_to_fix_it(local_agent):
    from hwnas.remote.client import AgentClient, AgentUnauthorized
    from hwnas.remote.transport import LoopbackTransport

    _, process = local_agent
    stranger = AgentClient(LoopbackTransport(process.port), "dev", "wrong", "read from a file")
    with pytest.raises(AgentUnauthorized, match=r"read from a file.*hwnas agent install PROFILE"):
        stranger.hello()


def test_the_token_file_is_private(local_agent):
    _, process = local_agent
    for path in (process.token_file, process.config_path):
        assert path.stat().st_mode & 0o777 == 0o600


def test_a_request_names_a_power_source_and_cannot_describe_one(tmp_path, models_dir):
    """The only program the agent runs for power is the one its own configuration names."""
    from hwnas_agent.protocol import MeasureRequest

    marker = tmp_path / "configured-meter-ran"
    meter = tmp_path / "meter.sh"
    meter.write_text(f"#!/bin/sh\ntouch {marker}\nwhile true; do echo 4.5 W; sleep 0.05; done\n")
    meter.chmod(0o700)
    process = configured_agent(tmp_path, {"usb-meter": {"kind": "command",
                                                         "options": {"command": [str(meter)]}}})
    client = process.client("power")
    artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
    client.ensure_model(artifact)
    base = {"model_sha256": artifact.sha256, "warmup_seconds": 0.0, "min_iterations": 10,
            "min_seconds": 0.05, "rounds": 1, "idle_seconds": 0.2}
    hostile = tmp_path / "injected"
    try:
        for extra, code in (({"power_options": {"command": f"touch {hostile}"}}, "unknown_field"),
                            ({"power_source": "command"}, "unknown_power_source"),
                            ({"power_source": f"x; touch {hostile}"}, "bad_field"),
                            ({"power_source": "tegrastats"}, "unknown_power_source")):
            status, payload = raw(process, "POST", "/v1/jobs", json.dumps(dict(base, **extra)))
            assert status == 400 and payload["error"]["code"] == code, payload
        assert not hostile.exists()
        measured = client.measure(MeasureRequest(**dict(base, power_source="usb-meter")))
        assert marker.exists()  # the configured program, and only it, ran
        assert measured.power_mean_w == pytest.approx(4.5)
        assert measured.agent_report["power"]["covers"].endswith(f"({meter})")
        assert client.hello()["power_sources"] == {
            "usb-meter": {"kind": "command", "options": {"command": [str(meter)]}}}
    finally:
        process.stop()


def test_the_profile_power_section_goes_to_the_agent_configuration(tmp_path):
    """open_device writes the profile's source (kind and options) into the local agent's
    configuration; the request carries its name only."""
    from hwnas.config import load_device_profile
    from hwnas.remote.device import open_device

    path = tmp_path / "dev.yaml"
    path.write_text("name: dev\nconnection: {kind: local}\n"
                    "power: {source: command, options: {command: my-meter --watts}}\n")
    profile = load_device_profile(path)
    request = profile.measure_request("0" * 64).to_dict()
    assert request["power_source"] == "command" and "power_options" not in request
    with open_device(profile, state_dir=tmp_path / "state") as client:
        configured = client.hello()["power_sources"]
        config = json.loads((tmp_path / "state" / "agent.json").read_text())
    assert configured == {"command": {"kind": "command", "options": {"command": "my-meter --watts"}}}
    assert config["power_sources"] == configured


def test_an_agent_refuses_a_configuration_others_can_write(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"state_dir": "state", "port": 0}))
    config.chmod(0o666)
    done = subprocess.run([sys.executable, "-m", "hwnas_agent", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"chmod 600 {config}" in done.stderr
    config.chmod(0o600)
    token = tmp_path / "state" / "token"
    token.parent.mkdir()
    token.write_text("x" * 64)
    token.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "hwnas_agent", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"token file {token} is accessible to other users" in done.stderr


def test_deeply_nested_json_is_a_400(local_agent):
    _, process = local_agent
    status, payload = raw(process, "POST", "/v1/jobs", b"[" * 100000 + b"]" * 100000)
    assert status == 400 and payload["error"]["code"] == "bad_json"
    assert "nested too deeply" in payload["error"]["message"]
    still_serving(process)


def test_the_agent_serves_on_ipv6_loopback(tmp_path):
    from hwnas.remote.client import AgentClient
    from hwnas.remote.local import LocalAgentProcess
    from hwnas.remote.transport import LoopbackTransport

    process = LocalAgentProcess(tmp_path / "v6", extra_args=("--host", "::1"))
    port = process.start()
    try:
        client = AgentClient(LoopbackTransport(port, host="::1"), "v6", process.token)
        assert client.hello()["agent"] == "hwnas-agent"
    finally:
        process.stop()
