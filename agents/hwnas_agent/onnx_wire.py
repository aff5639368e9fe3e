"""Every file an ONNX model asks to read, found without the onnx package (onnx_refs.py checks
them).

A TensorProto whose ``data_location`` is EXTERNAL keeps its bytes in another file named by its
``external_data`` entries (location, offset, length), relative to the model's folder. onnxruntime
1.14-1.16 opened whatever path it was given (``../token``), and a runtime's own checks vary
with its version: the agent checks every reference itself, before any runtime opens the model.

The walk reads protobuf's wire format directly, only the messages where a tensor or a graph
can hide, bounded in nesting and in fields visited: bytes that are not a well-formed ModelProto
are refused, never a crash or a hang. Field numbers are onnx.proto's (onnx 1.x):

  ModelProto         graph = 7, training_info = 20, functions = 25
  GraphProto         node = 1, initializer = 5, sparse_initializer = 15
  NodeProto          name = 3, op_type = 4, attribute = 5, domain = 7
  AttributeProto     name = 1, i = 3, s = 4, t = 5, g = 6, tensors = 10, graphs = 11,
                     sparse_tensor = 22, sparse_tensors = 23
  TensorProto        dims = 1, data_type = 2, name = 8, external_data = 13, data_location = 14
                     (DataLocation: DEFAULT = 0, EXTERNAL = 1)
  SparseTensorProto  values = 1, indices = 2
  FunctionProto      name = 1, node = 7, attribute_proto = 11
  TrainingInfoProto  initialization = 1, algorithm = 2
  StringStringEntryProto  key = 1, value = 2

onnxruntime's EPContext node (domain com.microsoft) with ``embed_mode = 0`` names a context
binary file in its ``ep_cache_context`` attribute: a file reference too, checked the same way.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Collection, Dict, Iterator, List, NamedTuple, Optional, Tuple

MAX_DEPTH = 32  # graphs inside graphs (If, Loop, Scan bodies; functions): real models nest a few
MAX_FIELDS = 4000000  # fields visited in all; exporters write a model in far fewer
MAX_FIELD_NUMBER = (1 << 29) - 1  # protobuf's own limit
EXTERNAL = 1
# TensorProto.DataType -> bits per element, for a reference without "length"
_ELEMENT_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32,
                 13: 64, 14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4,
                 23: 4, 24: 8, 25: 2, 26: 2}


class ModelRefused(Exception):
    """The model reads a file that is not its own, or is not a well-formed ONNX model."""


class MalformedModel(ModelRefused):
    """The bytes are not a well-formed ONNX model (protobuf): no runtime is given them."""


class _Malformed(Exception):
    pass


class Reference(NamedTuple):
    """One file a model reads: who reads it (``what``), and the bytes it asks for."""

    what: str  # "tensor 'w' (graph initializer)"
    location: Optional[str]  # None: EXTERNAL without a location
    offset: Optional[str]  # as written in the model (a decimal string), None if absent
    length: Optional[str]
    nbytes: Optional[int]  # the tensor's size from dims and data type, None if unknown
    repeated_keys: Tuple[str, ...] = ()
    whole_file: bool = False  # an EPContext binary: the whole file, no offset or length


class _Walker:
    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.fields_left = MAX_FIELDS
        self.found: List[Reference] = []

    # -- the wire format ------------------------------------------------------------------
    def _varint(self, pos: int, end: int) -> Tuple[int, int]:
        buf, result, shift = self.buf, 0, 0
        while True:
            if pos >= end:
                raise _Malformed("a number runs past the end of its message at byte %d" % pos)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise _Malformed("a number longer than 10 bytes at byte %d" % pos)

    def _count(self) -> None:
        self.fields_left -= 1
        if self.fields_left < 0:
            raise ModelRefused("over %d protobuf fields to walk; the agent takes models as ONNX "
                               "exporters write them" % MAX_FIELDS)

    def _fields(self, start: int, end: int) -> Iterator[Tuple[int, int, Any]]:
        """(number, wire type, value) of each field in buf[start:end]; a length-delimited
        value is its (start, end), others an int."""
        pos = start
        while pos < end:
            self._count()
            key, pos = self._varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0 or number > MAX_FIELD_NUMBER:
                raise _Malformed("field number %d at byte %d" % (number, pos))
            if wire == 0:
                value, pos = self._varint(pos, end)
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if pos + size > end:
                    raise _Malformed("a fixed-size field runs past its message at byte %d" % pos)
                value = int.from_bytes(self.buf[pos:pos + size], "little")
                pos += size
            elif wire == 2:
                length, pos = self._varint(pos, end)
                if length > end - pos:
                    raise _Malformed("a field of %d bytes runs past its message at byte %d"
                                     % (length, pos))
                value = (pos, pos + length)
                pos += length
            else:  # 3, 4: groups (no ONNX message has one); 6, 7: not protobuf
                raise _Malformed("wire type %d at byte %d" % (wire, pos))
            yield number, wire, value

    def _messages(self, start: int, end: int, wanted: Dict[int, str], singular: Collection[int] = ()
                  ) -> Iterator[Tuple[int, Any]]:
        """The fields ``wanted`` (number -> what it is, for messages) of one message; their wire
        type must be length-delimited; a ``singular`` field may appear once (protobuf would merge
        two, and what the runtime sees would not be what was checked)."""
        seen = set()
        for number, wire, value in self._fields(start, end):
            if number not in wanted:
                continue
            if wire != 2:
                raise _Malformed("%s (field %d) is not length-delimited" % (wanted[number], number))
            if number in singular:
                if number in seen:
                    raise _Malformed("%s (field %d) appears twice" % (wanted[number], number))
                seen.add(number)
            yield number, value

    def _text(self, span: Tuple[int, int]) -> str:
        return bytes(self.buf[span[0]:span[1]]).decode("utf-8", "surrogateescape")

    # -- the messages where tensors and graphs live ---------------------------------------
    def model(self, start: int, end: int) -> None:
        for number, span in self._messages(start, end, {7: "ModelProto.graph",
                                                        20: "ModelProto.training_info",
                                                        25: "ModelProto.functions"}, (7,)):
            if number == 7:
                self.graph(span, "graph", 1)
            elif number == 20:
                for inner, graph in self._messages(
                        span[0], span[1], {1: "TrainingInfoProto.initialization",
                                           2: "TrainingInfoProto.algorithm"}, (1, 2)):
                    self.graph(graph, "training %s" % ("initialization" if inner == 1
                                                       else "algorithm"), 1)
            else:
                self.function(span, 1)

    def graph(self, span: Tuple[int, int], where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ModelRefused("graphs nested over %d deep (%s)" % (MAX_DEPTH, where))
        fields = {1: "GraphProto.node", 5: "GraphProto.initializer",
                  15: "GraphProto.sparse_initializer"}
        for number, value in self._messages(span[0], span[1], fields):
            if number == 1:
                self.node(value, where, depth)
            elif number == 5:
                self.tensor(value, "%s initializer" % where)
            else:
                self.sparse(value, "%s sparse initializer" % where)

    def function(self, span: Tuple[int, int], depth: int) -> None:
        name, nodes, attributes = "?", [], []
        for number, value in self._messages(span[0], span[1], {1: "FunctionProto.name",
                                                               7: "FunctionProto.node",
                                                               11: "FunctionProto.attribute_proto"},
                                            (1,)):
            if number == 1:
                name = self._text(value)
            elif number == 7:
                nodes.append(value)
            else:
                attributes.append(value)
        where = "function %r" % name
        for value in nodes:
            self.node(value, where, depth)
        for value in attributes:
            self.attribute(value, "%s default" % where, depth)

    def node(self, span: Tuple[int, int], where: str, depth: int) -> None:
        name, op_type, domain, attributes = "", "", "", []
        for number, value in self._messages(span[0], span[1], {3: "NodeProto.name",
                                                               4: "NodeProto.op_type",
                                                               5: "NodeProto.attribute",
                                                               7: "NodeProto.domain"}, (3, 4, 7)):
            if number == 5:
                attributes.append(value)
            elif number == 3:
                name = self._text(value)
            elif number == 4:
                op_type = self._text(value)
            else:
                domain = self._text(value)
        here = "%s node %r (%s)" % (where, name, op_type)
        embed_modes, contexts = [], []
        for value in attributes:
            attribute_name, integer, text = self.attribute(value, here, depth)
            if attribute_name == "embed_mode":
                embed_modes.append(integer)
            elif attribute_name == "ep_cache_context":
                contexts.append(text)
        # embed_mode defaults to 1 (the binary inside the attribute); 0 makes it a file's path
        if op_type == "EPContext" and domain in ("com.microsoft", "") and 0 in embed_modes:
            for text in contexts:
                what = "node %r (EPContext context binary, %s)" % (name, where)
                self.found.append(Reference(what, text, None, None, None, whole_file=True))

    def attribute(self, span: Tuple[int, int], where: str, depth: int
                  ) -> Tuple[str, Optional[int], Optional[str]]:
        """Walks the attribute's tensors and graphs; returns its name, i and s."""
        name, integer, text, children = "", None, None, []
        seen = set()
        for number, wire, value in self._fields(span[0], span[1]):
            if number in (1, 3, 4, 5, 6, 22):  # singular: protobuf would merge two
                if number in seen:
                    raise _Malformed("AttributeProto field %d appears twice in %s"
                                     % (number, where))
                seen.add(number)
            if number == 3 and wire == 0:  # i: an int64 (negative as 10-byte two's complement)
                integer = value - (1 << 64) if value >= 1 << 63 else value
            elif number in (1, 4, 5, 6, 10, 11, 22, 23):
                if wire != 2:
                    raise _Malformed("AttributeProto field %d is not length-delimited" % number)
                if number == 1:
                    name = self._text(value)
                elif number == 4:
                    text = self._text(value)
                else:
                    children.append((number, value))
        here = "%s attribute %r" % (where, name)
        for number, value in children:
            if number in (5, 10):
                self.tensor(value, here)
            elif number in (6, 11):
                self.graph(value, here, depth + 1)
            else:
                self.sparse(value, here)
        return name, integer, text

    def sparse(self, span: Tuple[int, int], where: str) -> None:
        for number, value in self._messages(span[0], span[1], {1: "SparseTensorProto.values",
                                                               2: "SparseTensorProto.indices"},
                                            (1, 2)):
            self.tensor(value, "%s (sparse %s)" % (where, "values" if number == 1 else "indices"))

    def tensor(self, span: Tuple[int, int], where: str) -> None:
        dims: List[int] = []
        data_type, name, location_flag, entries = None, "", False, []
        seen = set()
        for number, wire, value in self._fields(span[0], span[1]):
            if number in (2, 8, 14):  # singular: protobuf would merge two, keeping the last
                if number in seen:
                    raise _Malformed("TensorProto field %d appears twice in %s" % (number, where))
                seen.add(number)
            if number == 1:
                if wire == 0:
                    dims.append(value)
                elif wire == 2:  # packed
                    pos = value[0]
                    while pos < value[1]:
                        self._count()
                        dim, pos = self._varint(pos, value[1])
                        dims.append(dim)
                else:
                    raise _Malformed("TensorProto.dims has wire type %d" % wire)
            elif number == 2 and wire == 0:
                data_type = value
            elif number == 8 and wire == 2:
                name = self._text(value)
            elif number == 13:
                if wire != 2:
                    raise _Malformed("TensorProto.external_data is not length-delimited")
                key, text = None, None
                for inner, inner_wire, inner_value in self._fields(value[0], value[1]):
                    if inner in (1, 2) and inner_wire != 2:
                        raise _Malformed("StringStringEntryProto field %d is not a string" % inner)
                    if inner == 1:
                        key = self._text(inner_value)
                    elif inner == 2:
                        text = self._text(inner_value)
                entries.append((key, text))
            elif number == 14 and wire == 0:
                location_flag = value == EXTERNAL
            elif number in (2, 8, 14):
                raise _Malformed("TensorProto field %d has wire type %d" % (number, wire))
        if not (location_flag or entries):
            return
        values: Dict[str, str] = {}
        repeated = []
        for key, text in entries:
            if key in values:
                repeated.append(str(key))
            values[str(key)] = text if text is not None else ""
        self.found.append(Reference("tensor %r (%s)" % (name, where),
                                    values.get("location") or None, values.get("offset"),
                                    values.get("length"), _tensor_bytes(dims, data_type),
                                    tuple(repeated)))


def _tensor_bytes(dims: List[int], data_type: Optional[int]) -> Optional[int]:
    bits = _ELEMENT_BITS.get(data_type or 0)
    if bits is None or any(d >= 1 << 62 for d in dims):  # a negative int64 reads as huge
        return None
    count = 1
    for dim in dims:
        count *= dim
    return (count * bits + 7) // 8


def external_references(model_path: str) -> List[Reference]:
    """Every file reference in the model at ``model_path``; ModelRefused if it is not a
    well-formed ONNX model (protobuf)."""
    with open(model_path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise MalformedModel("the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if size >= 8 and buf[4:8] == b"ORTM":
                raise MalformedModel("an ORT-format model; the agent takes ONNX (protobuf) "
                                     "models only")
            walker = _Walker(buf)
            try:
                walker.model(0, size)
            except _Malformed as exc:
                raise MalformedModel("not a well-formed ONNX model (%s)" % exc) from None
            return walker.found
