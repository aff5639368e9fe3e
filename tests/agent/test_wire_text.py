"""Runtime error text fit for the wire: kind, node and message kept, tensor values gone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwnas_agent.onnx_refs import ModelRefused
from hwnas_agent.wire_text import MAX_WIRE_CHARS, redact, runtime_message, wire_error

SECRET = [53, 99, 102, 51, 97, 57]  # "5cf3a9": the start of a hex token, as bytes


def run_error(node: onnx.NodeProto, initializer: np.ndarray, x_shape=(1,)) -> Exception:
    """The exception a real onnxruntime raises running ``node`` on x and ``initializer``."""
    import onnxruntime as ort

    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(initializer, "values")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as caught:
        session.run(None, {"x": np.zeros(x_shape, np.float32)})
    return caught.value


def test_onnxruntime_reshape_error_keeps_kind_node_and_message_not_the_shape():
    exc = run_error(helper.make_node("Reshape", ["x", "values"], ["y"], name="leak"),
                    np.array(SECRET, dtype=np.int64))
    assert "requested shape:{53,99,102" in str(exc)  # what onnxruntime says
    wire = wire_error(exc)
    assert wire["type"] == type(exc).__name__  # Fail, RuntimeException...: the kind stays
    message = wire["message"]
    assert message.startswith("Reshape node 'leak': ")
    assert "cannot be reshaped to the requested shape" in message
    assert "requested shape:{…}" in message
    assert not any(str(value) in message for value in SECRET), message
    assert "onnxruntime_src" not in message and "was false" not in message


def test_onnxruntime_gather_error_loses_the_index_value():
    exc = run_error(helper.make_node("Gather", ["x", "values"], ["y"], name="pick"),
                    np.array(SECRET[:2], dtype=np.int64), x_shape=(3,))
    assert "idx=53" in str(exc)
    message = wire_error(exc)["message"]
    assert message.startswith("Gather node 'pick': ") and "out of data bounds" in message
    assert "53" not in message and "idx=#" in message


@pytest.mark.parametrize("text, kept, gone", [
    ("[ONNXRuntimeError] : 1 : FAIL : Node (e1) Op (Expand) [ShapeInferenceError] "
     "Incompatible dimensions", ["Expand node 'e1': ", "Incompatible dimensions"], ["FAIL :"]),
    ("cannot reshape array of size 65 into shape (53,99)", ["cannot reshape array of size #"],
     ["65", "53", "99"]),
    ("Type (tensor(float16)) of input (x) in node (add_3) is invalid",
     ["tensor(float16)", "add_3"], []),
    ("token 5cf3a9d0e1f2a3b4c5d6e7f8a9b0c1d2 and dGhpcyBpcyBhIHNlY3JldDEy", ["token … and …"],
     ["5cf3", "dGhp"]),
    ("values [ 1.5e3, -2, 0x1F ] and {7 8 9}", ["values […] and {…}"], ["1.5", "0x1F"]),
])
def test_runtime_messages_lose_numbers_and_dumps(text, kept, gone):
    message = runtime_message(text)
    for part in kept:
        assert part in message, message
    for part in gone:
        assert part not in message, message


def test_messages_are_short_and_a_log_tail_keeps_its_end():
    long = "error " * 500 + "the last words"
    assert len(runtime_message(long)) <= MAX_WIRE_CHARS
    tail = redact(long, keep_end=True)
    assert len(tail) <= MAX_WIRE_CHARS and tail.endswith("the last words")


def test_the_agents_own_messages_go_as_they_are():
    exc = ModelRefused("tensor 't' (graph initializer) reads external data from 'data.bin', "
                       "asking for bytes 60 to 68 of a file of 64 bytes")
    assert wire_error(exc) == {"type": "ModelRefused", "message": str(exc)}
    # a runtime's (or numpy's, or Python's) message is redacted
    assert wire_error(ValueError("shape (53, 99)")) == {"type": "ValueError",
                                                        "message": "shape (…)"}
