"""float16 islands: chosen nodes compute in float16, with one Cast at each border tensor.

onnxruntime's and onnxconverter-common's float16 converters are built for "everything fp16
but a few blocked nodes": they type every tensor float16 and wrap each blocked node in its
own pair of Casts (and name two Casts alike when a tensor feeds two blocked nodes). A plan
with a few fp16 units in an otherwise fp32 or int8 graph needs the opposite: Casts only
where a tensor crosses between an island and the rest, shared by all its consumers.
"""

from __future__ import annotations

from typing import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ops left in float32 even inside an fp16 unit: they have no float16 form in the ONNX spec
# or in common runtimes (onnxruntime's converter blocks the same ones)
FP32_ONLY_OPS = frozenset({"TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
                           "NonMaxSuppression", "RandomUniformLike", "QuantizeLinear",
                           "DequantizeLinear"})
# inputs that stay float32 whatever the op's data type (Resize's scales)
FLOAT32_INPUTS = {"Resize": (2,), "GroupNorm": (1, 2)}
_FP16_MAX = 65504.0


def _to_fp16(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    names = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
             if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    names |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type == TensorProto.FLOAT:
                names.add(node.output[0])
    return names


def _convert_node(node: onnx.NodeProto) -> None:
    """Attributes that carry a float type or float values follow the node into float16."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.FLOAT16
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
            converted = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(attribute.t)),
                                                attribute.t.name)
            attribute.t.CopyFrom(converted)


def make_islands(model: onnx.ModelProto, island_nodes: Collection[str],
                 io_fp16: bool = False) -> onnx.ModelProto:
    """``island_nodes`` compute in float16; float16 graph inputs/outputs if ``io_fp16``."""
    graph = model.graph
    floats = _float_tensors(model)
    inside = {n.name for n in graph.node if n.name in island_nodes and n.op_type not in FP32_ONLY_OPS}
    initializers = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    produced_inside = {out for n in graph.node if n.name in inside for out in n.output
                       if out in floats}
    casts: list[onnx.NodeProto] = []
    cast_of: dict[tuple[str, int], str] = {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in cast_of:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            cast_of[key] = f"{tensor}_to_{suffix}"
            casts.append(helper.make_node("Cast", [tensor], [cast_of[key]], to=to,
                                          name=f"{tensor}_cast_to_{suffix}"))
        return cast_of[key]

    fp16_initializers: dict[str, str] = {}

    def fp16_initializer(name: str) -> str:
        if name not in fp16_initializers:
            if all(u.name in inside for u in users[name]):
                tensor = initializers[name]
                tensor.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(tensor)), name))
                fp16_initializers[name] = name
            else:  # shared with float32 nodes: they keep theirs
                copy = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(initializers[name])),
                                               f"{name}_fp16")
                graph.initializer.append(copy)
                fp16_initializers[name] = copy.name
        return fp16_initializers[name]

    # graph inputs that become float16 feed float32 consumers through a Cast
    fp16_inputs = {i.name for i in graph.input if io_fp16 and i.name in floats}
    # graph outputs of the wrong float type are renamed inside and cast to their own name
    output_casts: list[onnx.NodeProto] = []
    for output in graph.output:
        from_inside = output.name in produced_inside or output.name in fp16_inputs
        if output.name not in floats or from_inside == io_fp16:
            continue
        inner = f"{output.name}_before_cast"
        for node in graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        floats.add(inner)
        if output.name in produced_inside:
            produced_inside.add(inner)
        output_casts.append(helper.make_node(
            "Cast", [inner], [output.name], name=f"{output.name}_cast_to_output",
            to=TensorProto.FLOAT16 if io_fp16 else TensorProto.FLOAT))
    for node in graph.node:
        node_inside = node.name in inside
        keep_fp32 = FLOAT32_INPUTS.get(node.op_type, ()) if node_inside else ()
        for index, name in enumerate(node.input):
            if not name or name not in floats or index in keep_fp32:
                continue
            if node_inside:
                if name in initializers:
                    node.input[index] = fp16_initializer(name)
                elif name not in produced_inside and name not in fp16_inputs:
                    node.input[index] = cast(name, TensorProto.FLOAT16)
            elif name in produced_inside or name in fp16_inputs:
                node.input[index] = cast(name, TensorProto.FLOAT)
        if node_inside:
            _convert_node(node)
    if io_fp16:
        for tensor in [*graph.input, *graph.output]:
            if tensor.name in floats:
                tensor.type.tensor_type.elem_type = TensorProto.FLOAT16
    _insert_in_order(graph, casts + output_casts)
    del graph.value_info[:]  # stale types: the next shape inference recomputes them
    return onnx.shape_inference.infer_shapes(model)


def _insert_in_order(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Keep the node list topologically sorted: each Cast right after its input's producer."""
    after: dict[str, list[onnx.NodeProto]] = {}
    early: list[onnx.NodeProto] = []
    producers = {out for node in graph.node for out in node.output}
    for cast in new_nodes:
        source = cast.input[0]
        if source in producers:
            after.setdefault(source, []).append(cast)
        else:
            early.append(cast)
    ordered = list(early)
    for node in graph.node:
        ordered.append(node)
        for output in node.output:
            ordered.extend(after.get(output, []))
    del graph.node[:]
    graph.node.extend(ordered)
