"""Generation measured through the real agent, end to end: the builder's model folder shipped
as a model of several files (AgentClient.ensure_files), verified file by file, measured by the
genai runtime with power from a real meter program (the agent's `command` source), read back
by the controller; settings the agent refuses; and an agent without onnxruntime-genai (the
Python 3.8 one, .venv-py38) saying what to install."""

from __future__ import annotations

import os

import pytest

from hwnas_agent.protocol import MeasureRequest

from hwnas.errors import MeasurementError

from tests.agent import power_fixtures as fx
from tests.agent.test_external_data_attack import PY38

FAST = {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 6, "min_seconds": 0.0,
        "rounds": 2, "prompt_tokens": 32, "generate_tokens": 16, "runtime": "genai"}


@pytest.fixture()
def agent(tmp_path):
    from hwnas.remote.local import LocalAgentProcess

    meter = fx.program(tmp_path, "usbmeter", "USB: 5.062V, 0.1146A, 0.580W\n", every_s=0.01)
    process = LocalAgentProcess(tmp_path / "state", power_sources={
        "usb": {"kind": "command", "options": {"command": [str(meter)], "rate_hz": 100}}})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_a_genai_folder_is_shipped_and_measured_with_decode_power(agent, genai_folder):
    client = agent.client("test-agent")
    sha256 = client.ensure_files(genai_folder, "model.onnx")
    stored = agent.state_dir / "models" / f"{sha256}.d"
    assert sorted(os.listdir(stored)) == sorted(os.listdir(genai_folder))
    request = MeasureRequest.from_dict(dict(FAST, model_sha256=sha256, power_source="usb",
                                            power_min_samples=10, idle_seconds=0.2))
    measurement = client.measure(request)
    assert measurement.model_sha256 == sha256
    assert measurement.prompt_tokens == 32 and measurement.generate_tokens == 16
    assert measurement.generation_rounds == measurement.iterations >= 6
    assert measurement.decode_tokens_per_s > 0 and measurement.prefill_tokens_per_s > 0
    assert 0 < measurement.ttft_ms_p50 <= measurement.ttft_ms_p90
    low, high = measurement.decode_tokens_per_s_ci95
    assert low <= measurement.decode_tokens_per_s <= high
    assert measurement.decode_cv >= 0
    assert measurement.peak_memory_mb > 0
    assert measurement.decode_power_mean_w == pytest.approx(0.580)
    assert measurement.decode_power_peak_w == pytest.approx(0.580)
    decode = measurement.agent_report["power"]["decode"]
    assert decode["tokens"] == measurement.generation_rounds * 15
    assert measurement.energy_mj_per_token == pytest.approx(
        0.580 * decode["seconds"] * 1000.0 / decode["tokens"])
    assert measurement.power is not None and measurement.power.mean_w == pytest.approx(0.580)
    runtime = measurement.agent_report["runtime"]
    assert runtime["name"] == "genai" and runtime["intra_op_threads"] == 1
    assert measurement.agent_report["request"]["prompt_tokens"] == 32


def test_bad_generation_settings_are_refused_naming_the_key(agent, genai_folder):
    client = agent.client("test-agent")
    sha256 = client.ensure_files(genai_folder, "model.onnx")
    # built without the client-side check, as another client might send it
    unchecked = MeasureRequest(model_sha256=sha256, runtime="genai", prompt_tokens=0)
    with pytest.raises(MeasurementError, match="refused the measure job: bad_field: field "
                                               "'prompt_tokens' = 0 is not allowed"):
        client.measure(unchecked)
    too_long = MeasureRequest.from_dict(dict(FAST, model_sha256=sha256, generate_tokens=600))
    with pytest.raises(MeasurementError, match=r"prompt_tokens \+ generate_tokens = 32 \+ 600 = "
                                               r"632 is more than the model's context_length 512"):
        client.measure(too_long)


@pytest.mark.skipif(not PY38.exists(), reason="no .venv-py38 (no Python 3.8 on this machine)")
def test_an_agent_without_onnxruntime_genai_says_what_to_install(tmp_path):
    """Python 3.8 has no onnxruntime-genai wheel: the agent runs, measures with onnxruntime,
    and a genai request fails with what to install."""
    from hwnas.records import Artifact
    from hwnas.remote.local import LocalAgentProcess
    from hwnas.testing.models import matmul_onnx

    process = LocalAgentProcess(tmp_path / "state", python=str(PY38))
    process.start()
    try:
        client = process.client("py38")
        # a model the oldest onnxruntime reads (IR 8): the builder's genai folders are IR 10
        artifact = Artifact.from_file(matmul_onnx(tmp_path / "dense.onnx", 0.01), {}, 0)
        client.ensure_model(artifact)
        with pytest.raises(MeasurementError) as caught:
            client.measure(MeasureRequest.from_dict(dict(FAST, model_sha256=artifact.sha256)))
        message = str(caught.value)
        assert "runtime 'genai' needs the onnxruntime-genai Python package" in message
        assert "pip install 'hwnas-agent[genai]'" in message
        plain = {k: v for k, v in FAST.items() if k != "runtime"}
        measurement = client.measure(MeasureRequest.from_dict(dict(plain,
                                                                   model_sha256=artifact.sha256)))
        assert measurement.iterations >= 6 and measurement.decode_tokens_per_s is None
        assert set(client.hello()["runtimes"]) == {"onnxruntime"}  # no genai to offer
    finally:
        process.stop()
