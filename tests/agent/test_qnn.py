"""Qualcomm's NPU through onnxruntime-qnn: the HTP backend's x86 simulator, through the real
agent. It says which graphs compile for the HTP, which nodes it refuses and why, and marks its
timings as a simulator's."""

import dataclasses

import onnx
import pytest
from hwnas_agent.protocol import MeasureRequest
from hwnas_agent.runtimes.ort_assignment import rejection_reasons
from hwnas_agent.runtimes.ort_providers import emulation, qnn_backend

from hwnas.records import Artifact

QNN = "QNNExecutionProvider"
# verbose onnxruntime log lines, as onnxruntime 1.31.1 with onnxruntime-qnn 2.7.0 (QNN SDK
# 2.51) write them on x86_64 Linux while partitioning a QDQ ResNet-18 and a weight-only one
VERBOSE_LOG = """\
2026-11-22 05:13:52.833120950 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (QuantizeLinear) :
\tOperator type: QuantizeLinear Node name: input_QuantizeLinear Node index: 2
\tREASON : QNN EP is configured to not take Q nodes that consume a graph input.

2026-11-22 05:13:52.833135571 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation PASSED for 5 nodes in OrtNodeUnit (Conv) :
\tOperator type: DequantizeLinear Node name: input_DequantizeLinear Node index: 43
\tOperator type: DequantizeLinear Node name: onnx::Conv_193_DequantizeLinear Node index: 3
\tOperator type: Conv Node name: /conv1/Conv Node index: 4

2026-11-22 05:13:54.482215425 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (DequantizeLinear) :
\tOperator type: DequantizeLinear Node name: /fc/Gemm_w_DequantizeLinear Node index: 68
\tREASON : QNN EP does not support a standalone DQ op with per-channel quantization
"""


def test_refusal_reasons_are_read_from_the_verbose_log():
    assert rejection_reasons(VERBOSE_LOG) == {
        "input_QuantizeLinear": "QNN EP is configured to not take Q nodes that consume a graph input.",
        "/fc/Gemm_w_DequantizeLinear":
            "QNN EP does not support a standalone DQ op with per-channel quantization"}


def test_the_htp_is_simulated_off_arm_only():
    htp = [{"backend_path": "/opt/qnn/lib/libQnnHtp.so"}]
    assert "simulated on x86_64" in emulation([QNN], htp, machine="x86_64")
    assert emulation([QNN], htp, machine="aarch64") is None
    assert emulation([QNN], [{"backend_type": "cpu"}], machine="x86_64") is None
    assert emulation(["CPUExecutionProvider"], [{}], machine="x86_64") is None
    assert qnn_backend({"backend_type": "HTP"}) == "htp" and qnn_backend({}) == "cpu"


@pytest.fixture()
def qnn():
    pytest.importorskip("onnxruntime_qnn", reason="the QNN simulator needs pip install onnxruntime-qnn")


def probe(tmp_path, precision, name):
    from hwnas.export.precision import realise_plan
    from hwnas.remote.check import precision_probe_model

    import numpy as np

    model = precision_probe_model()
    if precision != "fp32":
        units = {node.name: "all" for node in model.graph.node}
        data = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
        model = realise_plan(model, units, {"all": precision}, data)
    path = tmp_path / name
    onnx.save(model, str(path))
    return Artifact.from_file(path, {}, 0)


def htp_request(sha, **changes):
    request = MeasureRequest(model_sha256=sha, execution_providers=[QNN],
                             provider_options=[{"backend_path": "libQnnHtp.so"}],
                             disable_cpu_fallback=True, warmup_iterations=1, warmup_seconds=0.0,
                             min_iterations=3, min_seconds=0.0, rounds=1)
    return dataclasses.replace(request, **changes)


def test_an_int8_graph_runs_whole_on_the_simulated_htp(qnn, local_agent, tmp_path):
    client, _ = local_agent
    artifact = probe(tmp_path, "int8", "int8.onnx")
    client.ensure_model(artifact)
    measured = client.measure(htp_request(artifact.sha256))
    runtime = measured.agent_report["runtime"]
    assert measured.emulated and "not the NPU's" in runtime["emulation"]
    assert runtime["execution_providers"][0] == QNN
    assert runtime["plugin_execution_providers"][QNN].endswith("libonnxruntime_providers_qnn.so")
    assert runtime["provider_options"][0]["backend_path"].endswith("/libQnnHtp.so")
    assert runtime["static_batch"] == {"batch": 1}  # the HTP compiles static graphs
    assert set(runtime["node_assignment"]["counts"]) == {QNN}
    assert runtime["node_assignment"]["elsewhere"] == []


def test_refused_nodes_are_named_with_the_htps_reason(qnn, local_agent, tmp_path):
    """Per-channel weight-only int8 is not an HTP format: fallback disabled, the job fails
    naming each refused node; fallback allowed, the result lists them with reasons."""
    from hwnas.errors import MeasurementError

    client, _ = local_agent
    artifact = probe(tmp_path, "int8_weight_only", "weight-only.onnx")
    client.ensure_model(artifact)
    with pytest.raises(MeasurementError, match="QNNExecutionProvider cannot run the whole graph") as err:
        client.measure(htp_request(artifact.sha256))
    assert "DequantizeLinear 'head_w_DequantizeLinear' (QNN EP does not support a standalone DQ " \
           "op with per-channel quantization)" in str(err.value)
    measured = client.measure(htp_request(artifact.sha256, disable_cpu_fallback=False))
    elsewhere = measured.agent_report["runtime"]["node_assignment"]["elsewhere"]
    assert {n["name"] for n in elsewhere} >= {"head_w_DequantizeLinear"}
    assert all(n["provider"] == "CPUExecutionProvider" and "per-channel" in n["reason"]
               for n in elsewhere)


def test_the_plugin_stays_a_plugin_within_one_process(qnn, tmp_path):
    """Once registered, the plugin is listed among the available providers; asked for by name
    in a provider list, onnxruntime would then run everything on the CPU without a word."""
    import onnxruntime as ort
    from hwnas_agent.runtimes.onnxruntime import open_session

    artifact = probe(tmp_path, "int8", "int8.onnx")
    for _ in range(2):
        session, plan, assignment = open_session(artifact.path, htp_request(artifact.sha256))
        assert plan.plugin == [QNN] and QNN in ort.get_available_providers()
        assert session.get_providers()[0] == QNN and set(assignment["counts"]) == {QNN}


def test_a_built_in_provider_opens_by_name(tmp_path):
    """The classic form (an onnxruntime built with the provider) takes the provider list."""
    from hwnas_agent.runtimes.onnxruntime import open_session

    artifact = probe(tmp_path, "fp32", "fp32.onnx")
    request = MeasureRequest(model_sha256=artifact.sha256)
    session, plan, assignment = open_session(artifact.path, request)
    assert plan.plugin == [] and plan.static_batch == {}
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert assignment["counts"] == {"CPUExecutionProvider": 7}


# events of an onnxruntime profile (enable_profiling): the Session, fence and CPU kernel
# events as onnxruntime 1.19.2 wrote them on Python 3.8 (the agent's oldest target, which has
# no assignment API), trimmed; the last one is a compiled subgraph in the same format, named
# as onnxruntime names an EP's fused node (<EP>_<EP type>_<hash>_<id>_0) - no QNN build of
# 1.19 was at hand to record one. Fences carry no provider.
PROFILE_EVENTS = [
    {"cat": "Session", "pid": 1, "tid": 1, "dur": 64155, "ts": 4, "ph": "X",
     "name": "model_loading_uri", "args": {}},
    {"cat": "Node", "pid": 1, "tid": 1, "dur": 0, "ts": 163864, "ph": "X",
     "name": "input_QuantizeLinear_fence_before", "args": {"op_name": "QuantizeLinear"}},
    {"cat": "Node", "pid": 1, "tid": 1, "dur": 79, "ts": 163869, "ph": "X",
     "name": "input_QuantizeLinear_kernel_time",
     "args": {"output_size": "12288", "node_index": "2", "provider": "CPUExecutionProvider",
              "op_name": "QuantizeLinear"}},
    {"cat": "Node", "pid": 1, "tid": 1, "dur": 2110, "ts": 163990, "ph": "X",
     "name": "QNNExecutionProvider_QNN_5791235270390290366_1_0_kernel_time",
     "args": {"node_index": "160", "provider": "QNNExecutionProvider",
              "op_name": "QNNExecutionProvider_QNN_5791235270390290366_1_0"}},
]


def test_node_assignment_from_a_profile_for_older_onnxruntime(tmp_path):
    import json

    from hwnas_agent.runtimes.ort_assignment import assignment_from_profile

    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE_EVENTS))
    assignment = assignment_from_profile(str(path), QNN)
    assert assignment["counts"] == {"CPUExecutionProvider": 1, QNN: 1}
    assert assignment["elsewhere"] == [{"name": "input_QuantizeLinear", "op_type": "QuantizeLinear",
                                        "provider": "CPUExecutionProvider"}]


def test_the_agent_refuses_provider_options_that_name_a_file(qnn, local_agent, tmp_path):
    """A trial attack: with profiling_file_path the QNN provider wrote a file (holding the
    model's node names) wherever the request said. The agent answers 400 and nothing is
    written."""
    import json

    from tests.agent.test_server import raw

    client, process = local_agent
    artifact = probe(tmp_path, "int8", "int8.onnx")
    client.ensure_model(artifact)
    target = tmp_path / "pwned.csv"
    request = htp_request(artifact.sha256).to_dict()
    request["provider_options"] = [{"backend_path": "libQnnHtp.so", "profiling_level": "detailed",
                                    "profiling_file_path": str(target)}]
    status, payload = raw(process, "POST", "/v1/jobs", body=json.dumps(request),
                          headers={"Content-Type": "application/json"})
    assert status == 400 and "profiling_file_path" in payload["error"]["message"]
    request["provider_options"] = [{"backend_path": str(process.token_file)}]
    status, payload = raw(process, "POST", "/v1/jobs", body=json.dumps(request),
                          headers={"Content-Type": "application/json"})
    assert status == 400 and "must be one of" in payload["error"]["message"]
    assert not list(tmp_path.glob("pwned*"))
