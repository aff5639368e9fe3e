"""The agent's own check of every file an ONNX model reads (external data), without onnx."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwnas_agent import onnx_wire
from hwnas_agent.onnx_refs import ModelRefused, check_external_data, external_references

from tests.conftest import REPO

PY38 = REPO / ".venv-py38" / "bin" / "python"
DATA = bytes(range(64))  # data.bin, beside the model


def external(name: str, location: str, dims=(4,), data_type=TensorProto.UINT8, offset="0",
             length="4", extra=()) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type, dims=list(dims),
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", length), *extra):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def model_of(graph: onnx.GraphProto, **fields) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **fields)
    model.ir_version = 8
    return model


def identity_graph(name="g", initializers=(), nodes=None, sparse=()) -> onnx.GraphProto:
    nodes = nodes if nodes is not None else [helper.make_node("Identity", ["x"], ["y"])]
    return helper.make_graph(nodes, name,
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                             initializer=list(initializers), sparse_initializer=list(sparse))


def save(folder: Path, model: onnx.ModelProto | bytes, name="model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.bin").write_bytes(DATA)
    path = folder / name
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def refused(path: Path, data_files=None) -> str:
    with pytest.raises(ModelRefused) as caught:
        check_external_data(str(path), data_files)
    return str(caught.value)


# -- a real external-data model, as onnx writes it ---------------------------------------------

@pytest.fixture()
def onnx_external_model(tmp_path) -> Path:
    """onnx.save_model(save_as_external_data=True): weights in weights.bin beside the model."""
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    bias = np.ones(8, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    path = tmp_path / "dense" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model_of(graph), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return path


def test_a_model_onnx_saved_with_external_data_is_allowed(onnx_external_model):
    import onnxruntime as ort

    found = check_external_data(str(onnx_external_model))
    assert sorted(r.what for r in found) == ["tensor 'b' (graph initializer)",
                                             "tensor 'w' (graph initializer)"]
    assert {r.location for r in found} == {"weights.bin"}
    assert sorted(int(r.length) for r in found) == [32, 256]
    # with a manifest naming its data file, too
    assert len(check_external_data(str(onnx_external_model), {"weights.bin"})) == 2
    # and onnxruntime agrees it is a model
    session = ort.InferenceSession(str(onnx_external_model), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)


def test_a_stored_model_reads_no_other_file_even_inside_its_folder(onnx_external_model, tmp_path):
    """The store's models are single files: a data file beside one is not its own."""
    message = refused(onnx_external_model, data_files=())
    assert "'weights.bin'" in message and "not part of the model" in message
    assert "one of the model's files" in refused(onnx_external_model, {"other.bin"})


@pytest.mark.skipif(not PY38.exists(), reason="no .venv-py38 (no Python 3.8 on this machine)")
def test_the_check_runs_on_python38(onnx_external_model):
    code = ("import sys; from hwnas_agent.onnx_refs import check_external_data as c, ModelRefused\n"
            "print(len(c(sys.argv[1])))\n"
            "try: c(sys.argv[1], ())\nexcept ModelRefused as e: print('refused', e)")
    done = subprocess.run([str(PY38), "-c", code, str(onnx_external_model)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "agents")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "2" and "not part of the model" in done.stdout


# -- every place a tensor can hide ---------------------------------------------------------------

def _bad(name="secret"):
    return external(name, "../secret.txt")


def _sparse(values_bad: bool) -> onnx.SparseTensorProto:
    values = _bad("sv") if values_bad else numpy_helper.from_array(np.ones(1, np.float32), "sv")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "si") if values_bad else _bad("si")
    return helper.make_sparse_tensor(values, indices, [4])


def _constant(**attributes):
    return helper.make_node("Constant", [], ["c"], name="const", **attributes)


PLACES = {
    "initializer": lambda: model_of(identity_graph(initializers=[_bad()])),
    "sparse values": lambda: model_of(identity_graph(sparse=[_sparse(True)])),
    "sparse indices": lambda: model_of(identity_graph(sparse=[_sparse(False)])),
    "Constant t": lambda: model_of(identity_graph(nodes=[_constant(value=_bad())])),
    "Constant sparse_tensor": lambda: model_of(identity_graph(nodes=[_constant(
        sparse_value=_sparse(True))])),
    "tensors attribute": lambda: model_of(identity_graph(nodes=[helper.make_node(
        "Custom", [], ["c"], domain="custom", name="n", ts=[numpy_helper.from_array(
            np.ones(1, np.float32), "ok"), _bad()])])),
    "If branch g": lambda: model_of(identity_graph(nodes=[helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=identity_graph("then", [_bad()]),
        else_branch=identity_graph("else"))])),
    "graphs attribute": lambda: model_of(identity_graph(nodes=[helper.make_node(
        "Custom", [], ["c"], domain="custom", name="n", gs=[identity_graph("a"),
                                                            identity_graph("b", [_bad()])])])),
    "If inside Loop": lambda: model_of(identity_graph(nodes=[helper.make_node(
        "Loop", ["m", "cond"], ["y"], name="loop", body=identity_graph("body", nodes=[
            helper.make_node("If", ["c"], ["y"], name="inner", then_branch=identity_graph(
                "deep", nodes=[_constant(value=_bad())]), else_branch=identity_graph("e"))]))])),
    "function node": lambda: model_of(identity_graph(), functions=[helper.make_function(
        "custom", "F", ["x"], ["y"], [_constant(value=_bad())], [helper.make_opsetid("", 17)])]),
    "function attribute default": lambda: _function_with_default(),
    "training initialization": lambda: _with_training(),
}


def _function_with_default() -> onnx.ModelProto:
    function = helper.make_function("custom", "F", ["x"], ["y"],
                                    [helper.make_node("Identity", ["x"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    function.attribute_proto.append(helper.make_attribute("default_t", _bad()))
    return model_of(identity_graph(), functions=[function])


def _with_training() -> onnx.ModelProto:
    model = model_of(identity_graph())
    info = model.training_info.add()
    info.initialization.CopyFrom(identity_graph("init", [_bad()]))
    return model


@pytest.mark.parametrize("place", list(PLACES))
def test_a_reference_is_found_wherever_a_tensor_can_be(tmp_path, place):
    path = save(tmp_path / "m", PLACES[place]())
    (tmp_path / "secret.txt").write_bytes(b"s" * 64)
    message = refused(path)
    assert "'../secret.txt'" in message and "climbs out" in message, message
    assert "tensor '" in message  # names the tensor


def test_where_names_the_nested_graph(tmp_path):
    message = refused(save(tmp_path / "m", PLACES["If inside Loop"]()))
    assert "node 'loop' (Loop) attribute 'body'" in message
    assert "node 'inner' (If) attribute 'then_branch'" in message


def test_an_epcontext_binary_outside_the_model_is_refused(tmp_path):
    context = helper.make_node("EPContext", ["x"], ["y"], domain="com.microsoft", name="ctx",
                               embed_mode=0, ep_cache_context="../engine.bin")
    message = refused(save(tmp_path / "m", model_of(identity_graph(nodes=[context]))))
    assert "EPContext" in message and "'../engine.bin'" in message
    embedded = helper.make_node("EPContext", ["x"], ["y"], domain="com.microsoft", name="ctx",
                                embed_mode=1, ep_cache_context="\x00binary")
    path = save(tmp_path / "e", model_of(identity_graph(nodes=[embedded])))
    assert check_external_data(str(path)) == []


# -- each rule --------------------------------------------------------------------------------

@pytest.mark.parametrize("tensor, why", [
    (external("t", "/etc/passwd"), "absolute path"),
    (external("t", "C:/data.bin"), "absolute path"),
    (external("t", "\\\\server\\share"), "absolute path"),
    (external("t", "sub\\..\\data.bin"), "backslash"),
    (external("t", "../m/data.bin"), "climbs out"),
    (external("t", "sub/../../data.bin"), "climbs out"),
    (external("t", "data.bin\x00../../token"), "NUL"),
    (external("t", "*/_ORT_MEM_ADDR_/*", offset="4096"), "process memory"),
    (external("t", "missing.bin"), "does not exist"),
    (external("t", "."), "not a regular file"),
    (external("t", "data.bin", offset="60", length="8"), "bytes 60 to 68 of a file of 64"),
    (external("t", "data.bin", offset="-1"), "not a number of bytes"),
    (external("t", "data.bin", offset="0x10"), "not a number of bytes"),
    (external("t", "data.bin", length=" 4"), "not a number of bytes"),
    (external("t", "data.bin", dims=(17,), data_type=TensorProto.FLOAT, length=None),
     "bytes 0 to 68 of a file of 64"),
    (external("t", "data.bin", data_type=TensorProto.STRING, length=None), "size is unknown"),
    (external("t", "data.bin", extra=[("location", "../token")]), "more than once"),
    (external("t", None), "no 'location'"),
    (external("t", ""), "no 'location'"),
])
def test_each_rule_refuses_with_its_reason(tmp_path, tensor, why):
    message = refused(save(tmp_path / "m", model_of(identity_graph(initializers=[tensor]))))
    assert why in message and "tensor 't'" in message, message


@pytest.mark.parametrize("tensor", [
    external("t", "data.bin"),
    external("t", "./data.bin", offset="60", length="4"),
    external("t", "data.bin", dims=(16,), data_type=TensorProto.FLOAT, offset="0", length=None),
    external("t", "data.bin", offset=None, length=None, dims=(8, 8)),
])
def test_references_inside_the_folder_and_the_file_are_allowed(tmp_path, tensor):
    path = save(tmp_path / "m", model_of(identity_graph(initializers=[tensor])))
    assert len(check_external_data(str(path))) == 1


def test_data_location_external_without_entries_is_refused(tmp_path):
    tensor = TensorProto(name="t", data_type=TensorProto.UINT8, dims=[1],
                         data_location=TensorProto.EXTERNAL)
    path = save(tmp_path / "m", model_of(identity_graph(initializers=[tensor])))
    assert "no 'location'" in refused(path)


def test_symbolic_links_are_refused_even_inside_the_folder(tmp_path):
    outside = tmp_path / "token"
    outside.write_bytes(b"t" * 64)
    path = save(tmp_path / "m", model_of(identity_graph(initializers=[external("t", "link.bin")])))
    (tmp_path / "m" / "link.bin").symlink_to(outside)
    assert "symbolic link" in refused(path)
    (tmp_path / "m" / "link.bin").unlink()
    (tmp_path / "m" / "sub").symlink_to(tmp_path)  # a folder that leads out
    path = save(tmp_path / "m", model_of(identity_graph(initializers=[external("t", "sub/token")])))
    assert "symbolic link ('sub')" in refused(path)


def test_the_store_refuses_its_token_and_its_neighbours(tmp_path):
    """Today's store: every model one file in models/, the token one level up."""
    store = tmp_path / "state" / "models"
    save(store, model_of(identity_graph()), "a" * 64 + ".onnx")
    for location in ("a" * 64 + ".onnx", "a" * 64 + ".json", "data.bin", "../token"):
        path = save(store, model_of(identity_graph(initializers=[external("t", location)])),
                    ".upload-x.onnx")
        assert "tensor 't'" in refused(path, data_files=())


# -- malformed bytes: a refusal, never a crash or a hang ----------------------------------------

def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
    (b"\x3a\x10abc", "runs past"),
    (b"\x3b\x00\x3c", "wire type 3"),
    (b"\x00\x00", "field number 0"),
    (b"\x3a", "runs past"),
    (b"\x10\x00\x00\x00ORTM\x00\x00", "ORT-format"),
    (_message(7, b"") + _message(7, b""), "appears twice"),  # two graphs would merge
    (_message(7, _message(5, _key(14, 0) + b"\x00" + _key(14, 0) + b"\x01")), "appears twice"),
    (_message(7, _message(5, _key(13, 0) + b"\x01")), "not length-delimited"),
    (_message(7, _key(1, 0) + b"\x01"), "not length-delimited"),
])
def test_malformed_protobuf_is_refused_clearly(tmp_path, data, why):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    message = refused(path)
    assert why in message, message


def test_graphs_nested_too_deep_are_refused(tmp_path):
    # written by hand: protobuf's own Python parser stops at 100 messages deep
    graph = b""
    for _ in range(onnx_wire.MAX_DEPTH + 1):  # GraphProto.node -> NodeProto.attribute -> .g
        graph = _message(1, _message(4, b"If") + _message(5, _message(1, b"then_branch")
                                                        + _message(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_message(7, graph))
    assert "nested over" in refused(path)


def test_too_many_fields_is_refused_not_walked_for_ever(tmp_path, monkeypatch):
    nodes = [helper.make_node("Identity", ["x"], ["y%d" % i]) for i in range(2000)]
    path = save(tmp_path / "m", model_of(identity_graph(nodes=nodes)))
    started = time.perf_counter()
    assert check_external_data(str(path)) == []
    assert time.perf_counter() - started < 2.0
    monkeypatch.setattr(onnx_wire, "MAX_FIELDS", 1000)
    assert "protobuf fields" in refused(path)


def test_mutated_models_are_refused_or_walked_never_crash(onnx_external_model, tmp_path):
    """Random truncations and byte flips of a real model: ModelRefused or a list, nothing else."""
    original = onnx_external_model.read_bytes()
    rng = random.Random(0)
    (tmp_path / "fuzz").mkdir()
    path = tmp_path / "fuzz" / "m.onnx"
    started = time.perf_counter()
    outcomes = {"refused": 0, "walked": 0}
    for _ in range(400):
        data = bytearray(original)
        if rng.random() < 0.3:
            data = data[:rng.randrange(1, len(data))]
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            external_references(str(path))
            outcomes["walked"] += 1
        except ModelRefused:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["walked"] > 0
    assert time.perf_counter() - started < 20
