"""Per-node weight precision in an onnxruntime-genai decoder graph, and reading it back.

The model builder writes one precision for the whole graph; a plan here gives each weighted
node its own. Starting from the builder's fp32 graph:

- ``int4`` / ``int8``: onnxruntime's MatMulNBitsQuantizer, one pass per (bits, block size)
  group, turns a MatMul into MatMulNBits (blockwise, along the input dimension K; when the
  block size does not divide K the quantizer zero-pads the last block, which the kernel
  accepts) and the embedding Gather into GatherBlockQuantized (4 bits only);
- ``fp16``: the weight is STORED in float16 and a Cast back to float32 feeds the node. The
  file halves; onnxruntime folds the Cast when it opens the session, so the CPU computes (and
  holds the weight) in float32. The builder's own fp16 is a CUDA/DML precision whose graph
  computes in float16 end to end, which the CPU kernels do not all offer;
- ``fp32``: left as the builder wrote it.

What each node became is read back from the written graph (``applied_precisions``), never
assumed from the plan.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from hwnas.errors import ExportError

EMBEDDING = "/model/embed_tokens/Gather"
LM_HEAD = "/lm_head/MatMul"
_LAYER_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/[^/]+/MatMul$")
_QUANT_SUFFIX = re.compile(r"_Q[48]$")


def weight_of(node: onnx.NodeProto) -> str | None:
    """The input that holds a weighted node's weight: B of a MatMul, the table of a Gather."""
    if node.op_type == "MatMul":
        return node.input[1]
    if node.op_type == "Gather":
        return node.input[0]
    return None


def _source(model: onnx.ModelProto, tensor: str) -> str:
    """The initializer behind ``tensor`` through Transpose/Cast nodes (a tied embedding is
    the lm_head's weight transposed), else ``tensor`` itself."""
    producers = {n.output[0]: n for n in model.graph.node if n.op_type in ("Transpose", "Cast")}
    while tensor in producers:
        tensor = producers[tensor].input[0]
    return tensor


def weighted_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Each MatMul/Gather with a constant weight -> its part: ``layers.N.attn``,
    ``layers.N.mlp``, ``embedding`` or ``lm_head``; an unknown weighted node is an error
    (a builder that names nodes differently must not be quantized by guess)."""
    initializers = {t.name for t in model.graph.initializer}
    parts: dict[str, str] = {}
    for node in model.graph.node:
        weight = weight_of(node)
        if weight is None or _source(model, weight) not in initializers:
            continue
        match = _LAYER_NODE.match(node.name)
        if match:
            parts[node.name] = f"layers.{match.group(1)}.{match.group(2)}"
        elif node.name == EMBEDDING:
            parts[node.name] = "embedding"
        elif node.name == LM_HEAD:
            parts[node.name] = "lm_head"
        else:
            raise ExportError(f"the builder wrote a weighted node hwnas does not know: {node.name} "
                              f"({node.op_type}); its precision cannot be planned")
    return parts


def _tie(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(embedding Gather, Transpose) where the builder wrote tied embeddings: the Gather reads
    the lm_head's weight through a Transpose (one tensor, so one precision)."""
    graph = model.graph
    gather = next((n for n in graph.node if n.name == EMBEDDING), None)
    transpose = next((n for n in graph.node if gather is not None and n.op_type == "Transpose"
                      and n.output[0] == gather.input[0]), None)
    if transpose is None or transpose.input[0] not in {t.name for t in graph.initializer}:
        return None
    return gather, transpose


def is_tied(model: onnx.ModelProto) -> bool:
    return _tie(model) is not None


def untie_embedding(model: onnx.ModelProto) -> bool:
    """Give a tied embedding Gather a table of its own (weights loaded in memory), so the
    embedding and the lm_head take different precisions; True if there was a tie."""
    graph = model.graph
    tie = _tie(model)
    if tie is None:
        return False
    gather, transpose = tie
    initializers = {t.name: t for t in graph.initializer}
    table = numpy_helper.to_array(initializers[transpose.input[0]]).T
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table),
                                                     "model.embed_tokens.weight"))
    gather.input[0] = "model.embed_tokens.weight"
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


def share_quantized_tie(model: onnx.ModelProto, block_size: int) -> None:
    """A tied embedding reads the int4 lm_head's MatMulNBits weight (symmetric, no zero
    points) through a Reshape into a GatherBlockQuantized, as the builder's own int4 export
    does: one int4 table instead of two. ``block_size`` divides the hidden size."""
    graph = model.graph
    tie = _tie(model)
    head = next((n for n in graph.node if n.name == f"{LM_HEAD}_Q4"), None)
    if tie is None or head is None or len(head.input) > 3:
        raise ExportError("the lm_head's int4 weight cannot be shared with the embedding")
    gather, transpose = tie
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    if int(attrs["block_size"]) != block_size or int(attrs["K"]) % block_size:
        raise ExportError("the lm_head's int4 blocks do not fit the embedding's")
    shape = numpy_helper.from_array(np.array([attrs["N"], attrs["K"] // 2], np.int64),
                                    "/model/embed_tokens/packed_shape")
    graph.initializer.append(shape)
    reshape = onnx.helper.make_node("Reshape", [head.input[1], shape.name],
                                    ["/model/embed_tokens/Reshape/output_0"],
                                    name="/model/embed_tokens/Reshape")
    lookup = onnx.helper.make_node(
        "GatherBlockQuantized", [reshape.output[0], gather.input[1], head.input[2]],
        list(gather.output), name=f"{EMBEDDING}_Q4", domain="com.microsoft", bits=4,
        block_size=block_size, gather_axis=0, quantize_axis=1)
    nodes = [reshape] + [lookup if n is gather else n for n in graph.node if n is not transpose]
    graph.ClearField("node")
    graph.node.extend(nodes)
    if not any(transpose.input[0] in n.input for n in graph.node):
        graph.initializer.remove(next(t for t in graph.initializer if t.name == transpose.input[0]))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs INFO lines per node through its module logger: raised to WARNING
    while it runs, and the host program's level given back after."""
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _quantize_group(model: onnx.ModelProto, names: set[str], bits: int, block_size: int,
                    symmetric: bool, accuracy_level: int | None) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # nodes_to_include only ADDS to op_types_to_quantize (every MatMul is taken whatever the
    # list says), so the group is chosen by excluding every other MatMul and Gather
    others = [n.name for n in model.graph.node
              if n.op_type in ("MatMul", "Gather") and n.name not in names]
    op_types = ("MatMul", "Gather") if EMBEDDING in names else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size,
                                     is_symmetric=symmetric, accuracy_level=accuracy_level,
                                     nodes_to_exclude=others, op_types_to_quantize=op_types)
    # an all-zero block (the padding token's embedding row) has scale 0: the quantizer
    # divides before its np.where picks 0 there, and numpy warns about the discarded NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        quantizer.process()
    return quantizer.model.model


def _store_fp16(model: onnx.ModelProto, names: set[str]) -> None:
    """The named nodes' weights stored in float16, cast back to float32 before use."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    casts = []
    for node in graph.node:
        if node.name not in names:
            continue
        weight = initializers[weight_of(node) or ""]
        values = numpy_helper.to_array(weight)
        if np.abs(values).max(initial=0.0) > 65504.0:
            raise ExportError(f"{node.name}: a weight exceeds float16's range; keep it fp32")
        stored = numpy_helper.from_array(values.astype(np.float16), f"{weight.name}_fp16")
        graph.initializer.remove(weight)
        graph.initializer.append(stored)
        casts.append(onnx.helper.make_node("Cast", [stored.name], [weight.name],
                                           to=TensorProto.FLOAT, name=f"{weight.name}_cast_fp32"))
    # the casts read initializers only, so putting them first keeps the graph sorted
    nodes = casts + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)


def apply_precisions(model: onnx.ModelProto, chosen: Mapping[str, tuple[str, int]],
                     symmetric: bool = True, accuracy_level: int | None = None) -> onnx.ModelProto:
    """``chosen``: node name -> (kind, block size), kind fp32 | fp16 | int8 | int4; weights
    loaded in memory. Returns the rewritten model (the quantizer builds a new one)."""
    groups: dict[tuple[int, int], set[str]] = {}
    for name, (kind, block) in chosen.items():
        if kind in ("int4", "int8"):
            groups.setdefault((int(kind[3:]), block), set()).add(name)
    with _quiet_quantizer():
        for (bits, block), names in sorted(groups.items()):
            model = _quantize_group(model, names, bits, block, symmetric, accuracy_level)
    _store_fp16(model, {name for name, (kind, _) in chosen.items() if kind == "fp16"})
    return model


def applied_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """What each weighted node of a written graph is: ``fp32``, ``fp16`` (a weight cast from
    float16), ``int4/32`` (bits / block size of MatMulNBits or GatherBlockQuantized), keyed by
    the builder's node name (the quantizer's ``_Q4``/``_Q8`` suffix removed)."""
    graph = model.graph
    dtypes = {t.name: t.data_type for t in graph.initializer}
    cast_from = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}
    found: dict[str, str] = {}
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits = int(attrs.get("bits", 4))
            found[_QUANT_SUFFIX.sub("", node.name)] = f"int{bits}/{int(attrs['block_size'])}"
            continue
        weight = weight_of(node)
        if weight is None:
            continue
        weight = weight if weight in dtypes or weight in cast_from else _source(model, weight)
        if weight in dtypes:
            found[node.name] = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}.get(
                dtypes[weight], TensorProto.DataType.Name(dtypes[weight]).lower())
        elif dtypes.get(cast_from.get(weight, "")) == TensorProto.FLOAT16:
            found[node.name] = "fp16"
    return found
