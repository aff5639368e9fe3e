import pytest

from hwnas_agent.protocol import MeasureRequest, ProtocolError

SHA = "a" * 64


def test_defaults_round_trip():
    request = MeasureRequest.from_dict({"model_sha256": SHA})
    assert MeasureRequest.from_dict(request.to_dict()) == request
    assert request.execution_providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("payload, code, fragment", [
    ([], "bad_request", "JSON object"),
    ({}, "missing_field", "model_sha256"),
    ({"model_sha256": SHA, "warmup_itrations": 3}, "unknown_field", "warmup_itrations"),
    ({"model_sha256": "xyz"}, "bad_field", "64 lowercase hex"),
    ({"model_sha256": SHA, "runtime": "tflite"}, "bad_field", "onnxruntime"),
    ({"model_sha256": SHA, "min_iterations": 0}, "bad_field", "min_iterations"),
    ({"model_sha256": SHA, "execution_providers": []}, "bad_field", "non-empty"),
    ({"model_sha256": SHA, "min_seconds": "2"}, "bad_field", "a number"),
    ({"model_sha256": SHA, "disable_cpu_fallback": "yes"}, "bad_field", "true or false"),
])
def test_bad_requests_are_refused_with_a_clear_message(payload, code, fragment):
    with pytest.raises(ProtocolError) as caught:
        MeasureRequest.from_dict(payload)
    assert caught.value.status == 400
    assert caught.value.code == code
    assert fragment in caught.value.message


QNN = "QNNExecutionProvider"


@pytest.mark.parametrize("provider, options, fragment", [
    # a trial attack (issue 25 review): QNN's profiler wrote a CSV holding the model's node
    # names wherever the request said; backend_path and op_packages load any file as a library
    (QNN, {"backend_path": "libQnnHtp.so", "profiling_level": "detailed",
           "profiling_file_path": "/home/agent/.bashrc"}, "'profiling_file_path' is not one"),
    (QNN, {"backend_path": "/tmp/state/token"}, "backend_path '/tmp/state/token' must be one"),
    (QNN, {"backend_path": "libQnnHtp.so", "op_packages": "x:/tmp/evil.so:f"}, "'op_packages'"),
    (QNN, {"qnn_saver_path": "/tmp/libQnnSaver.so"}, "'qnn_saver_path'"),
    (QNN, {"soc_model": "../../x"}, "a value may not be a path"),
    ("CUDAExecutionProvider", {"gpu_external_alloc": "140737488355328"}, "'gpu_external_alloc'"),
    ("TensorrtExecutionProvider", {"trt_engine_cache_path": "/etc"}, "'trt_engine_cache_path'"),
    ("OpenVINOExecutionProvider", {"cache_dir": "/tmp"}, "names a place on the device"),
    ("OpenVINOExecutionProvider", {"device_type": "/dev/x"}, "a value may not be a path"),
])
def test_provider_options_carry_settings_never_places_or_addresses(provider, options, fragment):
    with pytest.raises(ProtocolError) as caught:
        MeasureRequest.from_dict({"model_sha256": SHA, "execution_providers": [provider],
                                  "provider_options": [options]})
    assert caught.value.status == 400 and caught.value.field == "provider_options"
    assert fragment in caught.value.message


@pytest.mark.parametrize("provider, options", [
    (QNN, {"backend_path": "libQnnHtp.so", "htp_performance_mode": "burst",
           "profiling_level": "basic"}),
    (QNN, {"backend_type": "htp", "enable_htp_fp16_precision": "1"}),
    ("TensorrtExecutionProvider", {"trt_fp16_enable": "True", "trt_int8_enable": "True",
                                   "trt_engine_cache_enable": "True"}),
    ("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}),
    ("OpenVINOExecutionProvider", {"device_type": "GPU", "precision": "FP16"}),
])
def test_the_settings_the_device_profiles_use_still_pass(provider, options):
    request = MeasureRequest.from_dict({"model_sha256": SHA, "execution_providers": [provider],
                                        "provider_options": [options]})
    assert request.provider_options == [options]


def test_job_states_are_an_enum_with_the_same_wire_strings():
    import json

    from hwnas_agent.protocol import FINISHED_STATES, JOB_STATES, JobState

    assert JOB_STATES == ("queued", "running", "done", "failed", "interrupted")
    assert json.dumps({"state": JobState.DONE}) == '{"state": "done"}'
    assert JobState("interrupted") is JobState.INTERRUPTED
    # a record read back from the wire or the disk holds plain strings
    assert "done" in FINISHED_STATES and "failed" in FINISHED_STATES
    assert "running" not in FINISHED_STATES and "queued" not in FINISHED_STATES
    assert "done" in set(FINISHED_STATES)  # the job history prunes with a set


def test_runtime_names_and_power_kinds_are_the_protocols():
    from hwnas_agent import power
    from hwnas_agent.power.base import DETECTED
    from hwnas_agent.protocol import NO_POWER, POWER_KINDS, POWER_SOURCES, RUNTIMES

    assert RUNTIMES == ("onnxruntime", "tensorrt", "genai")
    assert POWER_SOURCES == (NO_POWER,) + POWER_KINDS
    assert tuple(power.KINDS) == POWER_KINDS  # the registry is built from the one list
    assert set(DETECTED) == set(POWER_KINDS) - {"command"}
    for kind in POWER_KINDS:  # each module declares the kind it is registered under
        module = __import__(power.KINDS[kind], fromlist=["x"])
        declared = {getattr(v, "kind", None) for v in vars(module).values() if isinstance(v, type)}
        assert kind in declared, (kind, declared)
