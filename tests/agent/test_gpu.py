"""GPU paths: CUDA / TensorRT execution providers, native TensorRT, NVML power.
They run where the hardware and its packages exist and skip elsewhere, saying why."""

import pytest
from hwnas_agent.protocol import MeasureRequest

from hwnas.records import Artifact


def _providers():
    import onnxruntime

    return onnxruntime.get_available_providers()


def _quick(sha, **overrides):
    values = dict(model_sha256=sha, warmup_seconds=0.2, min_iterations=50, min_seconds=0.3, rounds=3)
    values.update(overrides)
    return MeasureRequest(**values)


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_gpu_execution_provider_is_really_used(local_agent, models_dir, provider):
    if provider not in _providers():
        pytest.skip(f"{provider} not available: needs an NVIDIA GPU and onnxruntime-gpu")
    client, _ = local_agent
    artifact = Artifact.from_file(models_dir / "large.onnx", {}, 0)
    client.ensure_model(artifact)
    measured = client.measure(_quick(artifact.sha256, execution_providers=[provider],
                                     disable_cpu_fallback=True))
    assert measured.execution_providers[0] == provider
    assert measured.latency_ms_p50 > 0


def test_native_tensorrt_builds_once_and_caches_the_engine(local_agent, models_dir):
    pytest.importorskip("tensorrt", reason="native TensorRT needs the tensorrt package and a GPU")
    client, _ = local_agent
    artifact = Artifact.from_file(models_dir / "large.onnx", {}, 0)
    client.ensure_model(artifact)
    first = client.measure(_quick(artifact.sha256, runtime="tensorrt", tensorrt_flags=["fp16"]))
    second = client.measure(_quick(artifact.sha256, runtime="tensorrt", tensorrt_flags=["fp16"]))
    assert first.agent_report["runtime"]["engine_cached"] is False
    assert first.agent_report["runtime"]["engine_build_seconds"] > 0
    assert second.agent_report["runtime"]["engine_cached"] is True
    assert second.agent_report["runtime"]["engine_build_seconds"] == 0
    assert second.latency_ms_p50 > 0


def test_nvml_power_during_a_gpu_job(models_dir, tmp_path):
    pynvml = pytest.importorskip("pynvml", reason="NVML power needs nvidia-ml-py and a GPU")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML not usable: {exc}")
    if "CUDAExecutionProvider" not in _providers():
        pytest.skip("no CUDA execution provider to load the GPU")
    from hwnas.remote.local import LocalAgentProcess

    # the agent's own configuration names the source; the request only selects it
    agent = LocalAgentProcess(tmp_path / "state", power_sources={"nvml": {"kind": "nvml"}})
    agent.start()
    try:
        client = agent.client("gpu")
        artifact = Artifact.from_file(models_dir / "large.onnx", {}, 0)
        client.ensure_model(artifact)
        measured = client.measure(_quick(artifact.sha256,
                                         execution_providers=["CUDAExecutionProvider"],
                                         power_source="nvml", idle_seconds=1.0))
    finally:
        agent.stop()
    power = measured.agent_report["power"]
    assert power["samples"] >= 20 and power["mean_w"] > 0 and power["idle_w"] > 0
    assert measured.energy_mj_per_inference > 0
