"""Accelerator compatibility screening against the local QNN HTP simulator profile: a
candidate the NPU cannot run whole is named op by op, with its unit and precision."""

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.config import load_device_profile
from hwnas.export.onnx import build_onnx, precision_units
from hwnas.records import Artifact
from hwnas.remote.device import open_device
from hwnas.remote.screen import known_emulation, needs_screening, screen_compatibility
from tests.conftest import REPO

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def htp():
    pytest.importorskip("onnxruntime_qnn", reason="the QNN simulator needs pip install onnxruntime-qnn")
    profile = load_device_profile(REPO / "device_profiles" / "local-qnn-htp.yaml")
    with open_device(profile) as client:
        yield profile, client


def exported(tmp_path, plan):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    units = precision_units(model, {"convs": [model[0], model[1], model[2], model[3]]}, "stage")
    data = np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32)
    built = build_onnx(model, SHAPE, plan, units, data, tmp_path / "m.onnx")
    return built, Artifact.from_file(built.path, {}, 0)


def test_the_local_htp_profile_is_screened_and_simulated():
    profile = load_device_profile(REPO / "device_profiles" / "local-qnn-htp.yaml")
    assert needs_screening(profile)
    assert "simulated" in known_emulation(profile)
    local = load_device_profile(REPO / "device_profiles" / "local.yaml")
    assert not needs_screening(local) and known_emulation(local) is None


def test_a_graph_the_htp_takes_whole_passes(htp, tmp_path):
    profile, client = htp
    plan = {"convs": "a16w8", "head": "int8"}
    built, artifact = exported(tmp_path, plan)
    screen = screen_compatibility(client, profile, artifact, built, plan)
    assert screen.compatible and screen.emulated and screen.refused == ()
    assert screen.reason() == "runs entirely on QNNExecutionProvider"


def test_refused_nodes_carry_op_unit_precision_and_reason(htp, tmp_path):
    profile, client = htp
    plan = {"convs": "int8", "head": "int8_weight_only"}
    built, artifact = exported(tmp_path, plan)
    screen = screen_compatibility(client, profile, artifact, built, plan)
    assert not screen.compatible and screen.refused_total == len(screen.refused) >= 1
    refused = screen.refused[0]
    assert (refused.op_type, refused.unit, refused.precision) == ("DequantizeLinear", "head",
                                                                  "int8_weight_only")
    assert "per-channel" in refused.reason
    assert "in unit head (int8_weight_only): QNN EP does not support a standalone DQ" in screen.reason()
    # the screening job's graph-input Q and output DQ stay on the HTP, as when measured
    assert not any(n.op_type == "QuantizeLinear" for n in screen.refused)


def test_devices_check_lists_the_precisions_the_runtime_really_accepts(tmp_path):
    """A small model written in each listed precision, loaded with the profile's providers
    and fallback setting: the HTP takes fp32/fp16/int8/a16w8 and refuses weight-only int8."""
    pytest.importorskip("onnxruntime_qnn", reason="the QNN simulator needs pip install onnxruntime-qnn")
    from hwnas.remote.check import check_device, check_table

    path = tmp_path / "htp.yaml"
    path.write_text((REPO / "device_profiles" / "local-qnn-htp.yaml").read_text().replace(
        "precisions: [fp32, fp16, int8, a16w8]", "precisions: [fp32, fp16, int8, a16w8, int8_weight_only]"))
    result = check_device(load_device_profile(path))
    assert result["ok"] and "simulated" in result["emulated"]
    verdicts = result["precisions"]
    assert all(verdicts[p] == "ok (simulated accelerator)" for p in ("fp32", "fp16", "int8", "a16w8"))
    assert verdicts["int8_weight_only"].startswith("refused:")
    assert "standalone DQ op with per-channel quantization" in verdicts["int8_weight_only"]
    assert "precision a16w8" in check_table([result])
    cpu = check_device(load_device_profile(REPO / "device_profiles" / "local.yaml"))
    assert cpu["precisions"] == {"fp32": "ok", "fp16": "ok", "int8": "ok"}


def test_a_power_source_the_device_lacks_fails_the_check(tmp_path):
    """A Raspberry Pi 5's PMIC asked of a machine without vcgencmd (a new user's aarch64 box
    passed `devices check` and failed at the first measurement): refused by name."""
    from hwnas.remote.check import check_device

    path = tmp_path / "pmic.yaml"
    local = (REPO / "device_profiles" / "local.yaml").read_text()
    assert local.count("  source: none ") == 1
    path.write_text(local.replace("  source: none ", "  source: pi5_pmic "))
    result = check_device(load_device_profile(path))
    assert not result["ok"], result
    assert "power.source pi5_pmic is not available" in result["error"]
    assert "power: {source: none}" in result["error"]
    path.write_text(local)
    assert check_device(load_device_profile(path))["ok"]


def test_devices_check_warns_of_more_threads_than_cores_and_a_noisy_device(tmp_path):
    """Both pass the check (the device works) but cost the search: said in the table."""
    import os

    from hwnas.remote.check import NOISY_CV, _warnings, check_device, check_table

    local = (REPO / "device_profiles" / "local.yaml").read_text()
    assert local.count("intra_op_threads: 1") == 1
    path = tmp_path / "threads.yaml"
    too_many = os.cpu_count() + 2
    path.write_text(local.replace("intra_op_threads: 1", f"intra_op_threads: {too_many}"))
    result = check_device(load_device_profile(path))
    assert result["ok"], result
    threads = [w for w in result["warnings"] if "intra_op_threads" in w]
    assert threads and f"use at most {os.cpu_count()}" in threads[0]
    assert f"warning              runtime.intra_op_threads {too_many}" in check_table([result])
    # the CV rule on the figures a device gave (a quiet calibration here cannot be made noisy)
    profile = load_device_profile(REPO / "device_profiles" / "local.yaml")
    facts = {"cpu_count": 4}
    assert _warnings(profile, facts, NOISY_CV / 2) == []
    noisy = _warnings(profile, facts, 1.38)
    assert len(noisy) == 1 and "calibration CV 1.38" in noisy[0]
