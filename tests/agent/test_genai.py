"""The genai runtime on a real onnxruntime-genai model folder (the model builder's output for a
tiny Llama, tests/conftest.py genai_folder): the generation figures, the settings it refuses,
the threads it is given, a configuration that would load code, and power over the decode
windows from a real meter program (the agent's `command` source)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from hwnas_agent import runtimes
from hwnas_agent.config import PowerSourceConfig
from hwnas_agent.onnx_refs import ModelRefused
from hwnas_agent.protocol import RESULT_FIELDS, MeasureRequest, ProtocolError, read_result

from tests.agent import power_fixtures as fx
from tests.conftest import REPO

SHA = "c" * 64
FAST = {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 6, "min_seconds": 0.0,
        "rounds": 2, "prompt_tokens": 24, "generate_tokens": 12}


def genai_request(**overrides) -> MeasureRequest:
    return MeasureRequest.from_dict(dict(FAST, model_sha256=SHA, runtime="genai", **overrides))


def test_a_measurement_reports_generation_figures_the_schema_reads(genai_folder):
    from hwnas_agent.worker import measure_file

    result = json.loads(json.dumps(measure_file(str(genai_folder / "model.onnx"),
                                                genai_request())))
    generation = result["generation"]
    assert generation["prompt_tokens"] == 24 and generation["generate_tokens"] == 12
    assert generation["rounds"] == result["iterations"] >= 6 and len(result["rounds"]) == 2
    assert generation["decode_tokens"] == generation["rounds"] * 11
    assert "decode_windows" not in result  # for the power summary only
    values = read_result(result)
    assert set(values) == set(RESULT_FIELDS)
    assert values["decode_tokens_per_s"] > 0 and values["prefill_tokens_per_s"] > 0
    assert 0 < values["ttft_ms_p50"] <= values["ttft_ms_p90"]
    low, high = values["decode_tokens_per_s_ci95"]
    assert low <= values["decode_tokens_per_s"] <= high
    assert values["generation_rounds"] == generation["rounds"]
    assert values["peak_rss_mb"] > 0 and values["power"] is None
    assert values["energy_mj_per_token"] is None
    assert result["runtime"]["name"] == "genai" and result["runtime"]["emulated"] is False
    assert result["runtime"]["context_length"] == 512


def test_image_results_still_read_without_generation_fields(models_dir):
    from hwnas_agent.worker import measure_file

    request = MeasureRequest.from_dict({"model_sha256": SHA, "warmup_iterations": 1,
                                        "warmup_seconds": 0.0, "min_iterations": 5,
                                        "min_seconds": 0.0, "rounds": 1})
    values = read_result(json.loads(json.dumps(measure_file(str(models_dir / "small.onnx"),
                                                            request))))
    assert values["decode_tokens_per_s"] is None and values["ttft_ms_p50"] is None
    assert values["latency_ms_p50"] > 0


@pytest.mark.parametrize("setting, value, expected", [
    ("prompt_tokens", 0, "field 'prompt_tokens' = 0 is not allowed"),
    ("generate_tokens", 1, "field 'generate_tokens' = 1 is not allowed"),
    ("generate_tokens", "64", "field 'generate_tokens' = '64' is not allowed"),
])
def test_bad_generation_settings_are_refused_naming_the_key(setting, value, expected):
    with pytest.raises(ProtocolError, match=expected) as caught:
        genai_request(**{setting: value})
    assert caught.value.field == setting


def test_a_generation_longer_than_the_context_is_refused_naming_the_keys(genai_folder):
    with pytest.raises(ValueError, match=r"prompt_tokens \+ generate_tokens = 24 \+ 500 = 524 "
                                         r"is more than the model's context_length 512"):
        runtimes.load(str(genai_folder / "model.onnx"), genai_request(generate_tokens=500))


def test_a_configuration_that_loads_code_or_reads_outside_is_refused(genai_folder, tmp_path):
    folder = tmp_path / "hostile"
    shutil.copytree(genai_folder, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    options = config["model"]["decoder"]["session_options"]
    options["custom_ops_library"] = "libevil.so"
    (folder / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefused, match="custom_ops_library"):
        runtimes.load(str(folder / "model.onnx"), genai_request())
    del options["custom_ops_library"]
    config["model"]["decoder"]["filename"] = "../../token"
    (folder / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefused, match="not a file of the model's folder"):
        runtimes.load(str(folder / "model.onnx"), genai_request())
    config["model"]["decoder"]["filename"] = "model.onnx"
    config["model"]["vision"] = {"config_filename": "/etc/passwd"}
    (folder / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefused, match="vision.config_filename = '/etc/passwd'"):
        runtimes.load(str(folder / "model.onnx"), genai_request())


THREADS = """
import os, sys
from hwnas_agent import runtimes
from hwnas_agent.protocol import MeasureRequest
request = MeasureRequest.from_dict({"model_sha256": "c" * 64, "runtime": "genai",
    "intra_op_threads": int(sys.argv[2]), "prompt_tokens": 8, "generate_tokens": 4})
before = len(os.listdir("/proc/self/task"))
model = runtimes.load(sys.argv[1], request)  # held: its sessions' threads live with it
model.run_once()
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_intra_op_threads_reach_onnxruntime(genai_folder):
    """onnxruntime's intra-op pool has n - 1 threads of its own: 4 threads make 3 more than 1."""
    def threads(count: int) -> int:
        done = subprocess.run([sys.executable, "-c", THREADS, str(genai_folder / "model.onnx"),
                               str(count)], capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(REPO / "agents")})
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    assert threads(4) - threads(1) == 3


def test_power_over_the_decode_windows_from_a_real_meter(genai_folder, tmp_path):
    from hwnas_agent.worker import measure_file

    meter = fx.program(tmp_path, "usbmeter", "4.21 W\n", every_s=0.01)
    source = PowerSourceConfig("command", {"command": [str(meter)], "rate_hz": 100})
    request = genai_request(power_source="command", power_min_samples=10, idle_seconds=0.2)
    result = json.loads(json.dumps(measure_file(str(genai_folder / "model.onnx"), request,
                                                source)))
    decode = result["power"]["decode"]
    generation = result["generation"]
    assert decode["windows"] == generation["rounds"] == result["iterations"]
    assert decode["tokens"] == generation["decode_tokens"]
    assert decode["seconds"] == pytest.approx(generation["decode_seconds"], rel=0.05)
    assert decode["mean_w"] == pytest.approx(4.21) and decode["peak_w"] == pytest.approx(4.21)
    assert decode["energy_mj_per_token"] == pytest.approx(
        4.21 * decode["seconds"] * 1000.0 / decode["tokens"])
    values = read_result(result)
    assert values["energy_mj_per_token"] == decode["energy_mj_per_token"]
    assert values["decode_power_mean_w"] == pytest.approx(4.21)
    assert result["power"]["mean_w"] == pytest.approx(4.21)  # the whole timed phase, as before


def test_decode_power_takes_the_windows_alone(tmp_path):
    """A ramp of 0..10 W over one second: windows 0.2-0.3 s and 0.7-0.8 s hold 2.5 and 7.5 W
    on average, whatever the rest of the phase drew; edges between readings interpolate."""
    from hwnas_agent.power import PowerSample, open_source
    from hwnas_agent.power.sampler import PowerUnavailable, Window, decode_power

    source = open_source("command", {"command": [str(fx.program(tmp_path, "m", "1 W\n"))]})
    try:
        samples = [PowerSample(10.0 * t / 8, time_s=t / 8) for t in range(9)]  # every 125 ms
        timed = Window(samples, [], 0.0, 1.0)
        decode = decode_power(source, timed, [[0.2, 0.3], [0.7, 0.8]], 50)
        assert decode["energy_j"] == pytest.approx(1.0) and decode["seconds"] == pytest.approx(0.2)
        assert decode["mean_w"] == pytest.approx(5.0) and decode["peak_w"] == pytest.approx(8.0)
        assert decode["energy_mj_per_token"] == pytest.approx(20.0)
        assert decode["samples_inside"] == 2 and decode["method"] == "trapezoid"
        with pytest.raises(PowerUnavailable, match="decode windows"):
            decode_power(source, timed, [[0.9, 1.2]], 50)
    finally:
        source.close()
