"""The device profiles shipped for the targets load, validate, and explain their precisions."""

import re

import pytest

from hwnas.config import load_device_profile
from hwnas.config.models import SSHConnection
from hwnas.errors import ConfigError
from tests.conftest import REPO

PROFILES = REPO / "device_profiles"
TARGETS = {"jetson-orin-nano": "tensorrt", "jetson-agx-thor": "tensorrt",
           "raspberry-pi-5": "CPUExecutionProvider", "raspberry-pi-4": "CPUExecutionProvider",
           "qualcomm-qcs6490": "QNNExecutionProvider", "x86-cpu": "CPUExecutionProvider",
           "nvidia-gpu": "TensorrtExecutionProvider"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_profiles_are_working_templates(name):
    path = PROFILES / f"{name}.yaml"
    profile = load_device_profile(path)
    assert profile.name == name and isinstance(profile.connection, SSHConnection)
    assert "placeholder" in path.read_text()
    runtime = TARGETS[name]
    assert runtime in (profile.runtime.name, profile.runtime.execution_providers[0])
    request = profile.measure_request("0" * 64)  # what the agent will be sent
    assert request.power_source == profile.power.source


@pytest.mark.parametrize("name", sorted(TARGETS) + ["local-qnn-htp"])
def test_each_listed_precision_is_explained_in_the_profile(name):
    text = (PROFILES / f"{name}.yaml").read_text()
    for precision in load_device_profile(PROFILES / f"{name}.yaml").precisions:
        assert re.search(rf"^#.*\b{precision}\b", text, re.M), f"{name}: {precision} not explained"


def test_the_npu_and_gpu_profiles_forbid_silent_cpu_fallback():
    for name in ("qualcomm-qcs6490", "nvidia-gpu", "local-qnn-htp"):
        assert load_device_profile(PROFILES / f"{name}.yaml").runtime.disable_cpu_fallback
    qcs = load_device_profile(PROFILES / "qualcomm-qcs6490.yaml")
    assert set(qcs.precisions) >= {"int8", "a16w8", "fp16"}


def test_tensorrt_profiles_quantize_symmetrically(tmp_path):
    for name in ("jetson-orin-nano", "jetson-agx-thor", "nvidia-gpu"):
        assert load_device_profile(PROFILES / f"{name}.yaml").export.int8_activations == "int8"
    unsaid = tmp_path / "unsaid.yaml"  # no export section: TensorRT's convention is the default
    unsaid.write_text("name: t\nconnection: {kind: local}\nruntime: {name: tensorrt}\n")
    assert load_device_profile(unsaid).export.int8_activations == "int8"
    text = (PROFILES / "jetson-orin-nano.yaml").read_text().replace(
        "int8_activations: int8", "int8_activations: uint8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="TensorRT quantizes symmetrically only"):
        load_device_profile(bad)


def test_an_unknown_precision_is_refused_with_the_allowed_ones(tmp_path):
    text = (PROFILES / "local.yaml").read_text().replace("precisions: [fp32, fp16, int8]",
                                                        "precisions: [fp32, int4]")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="precisions") as err:
        load_device_profile(bad)
    assert "a16w8" in str(err.value) and "int8_weight_only" in str(err.value)
