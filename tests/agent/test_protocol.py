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
