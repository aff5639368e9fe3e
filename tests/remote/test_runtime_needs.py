"""Which runtime a profile will use on a device, from the agent's facts, or what it lacks."""

from __future__ import annotations

from hwnas.config import load_device_profile
from hwnas.remote.runtime_needs import runtime_use

CPU_ONLY = {"runtimes": {"onnxruntime": {"version": "1.19.2", "location": "/a/venv/x",
                                         "execution_providers": ["CPUExecutionProvider"]}}}
JETSON = {"runtimes": {
    "onnxruntime": {"version": "1.19.2", "execution_providers": ["CPUExecutionProvider"]},
    "tensorrt": {"version": "8.5.2.2", "location": "/usr/lib/python3.8/dist-packages/tensorrt"}}}


def profile(tmp_path, runtime: str):
    path = tmp_path / "d.yaml"
    path.write_text(f"name: d\nconnection: {{kind: ssh, host: d}}\nruntime: {runtime}\n"
                    "precisions: [fp32]\n")
    return load_device_profile(path)


def test_the_runtime_a_profile_will_use_is_named_with_its_version(tmp_path):
    cpu = profile(tmp_path, "{execution_providers: [CPUExecutionProvider]}")
    assert runtime_use(cpu, CPU_ONLY) == ("onnxruntime 1.19.2 with CPUExecutionProvider", None)
    trt = profile(tmp_path, "{name: tensorrt}")
    uses, missing = runtime_use(trt, JETSON)
    assert missing is None and uses.startswith("tensorrt 8.5.2.2 (/usr/lib/python3.8")


def test_a_runtime_the_device_lacks_names_the_package_that_provides_it(tmp_path):
    cuda = profile(tmp_path, "{execution_providers: [CUDAExecutionProvider, CPUExecutionProvider]}")
    _, missing = runtime_use(cuda, CPU_ONLY)
    assert "asks for CUDAExecutionProvider" in missing and "onnxruntime-gpu" in missing
    assert "offers CPUExecutionProvider" in missing
    _, missing = runtime_use(profile(tmp_path, "{name: tensorrt}"), CPU_ONLY)
    assert "python3-libnvinfer" in missing and "not installed" in missing
    broken = {"runtimes": {"tensorrt": {"error": "OSError: libnvinfer.so.8: cannot open"}}}
    _, missing = runtime_use(profile(tmp_path, "{name: tensorrt}"), broken)
    assert "fails to import: OSError: libnvinfer.so.8" in missing
