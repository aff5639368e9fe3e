"""A precision plan written into ONNX bytes: Q/DQ pairs, fp16 islands, weight-only int8.

Each node takes the precision of its unit (see ``hwnas.export.onnx.node_units``):

- ``int8``: static QDQ, 8-bit activations and per-channel symmetric int8 weights
  (onnxruntime.quantization.quantize_static with the other nodes excluded);
- ``a16w8``: the same with 16-bit activations (uint16), through tensor overrides on the
  unit's outputs; onnxruntime's mixed-precision fixer inserts the 8 <-> 16-bit conversions
  at unit borders;
- ``int8_weight_only``: int8 per-channel weights behind a DequantizeLinear, activations stay
  float (what TensorRT and onnxruntime call weight-only quantization);
- ``fp16``: the unit's nodes compute in float16 with Casts at the island's borders
  (onnxruntime's float16 converter with every other node blocked);
- ``fp32``: left alone.

Everything a runtime needs is in the bytes, so the CPU, TensorRT and QNN get the same plan.
How integers look (uint8 asymmetric for onnxruntime's CPU kernels and the HTP, int8
symmetric for TensorRT) and whether the model's inputs/outputs are float16 come from the
device profile's ``export`` section (``ExportStyle`` here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwnas.errors import ExportError
from hwnas.export.fp16 import make_islands
from hwnas.export.graph import INPUT_NAME, WEIGHTED_OPS, graph_inputs

PRECISIONS = ("fp32", "fp16", "int8", "a16w8", "int8_weight_only")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
STATIC = ("int8", "a16w8")
CALIBRATION_BATCH = 32
# onnxruntime's own marker for "shape inference and optimisation already done" (see
# quant_utils.model_has_pre_process_metadata): our exports are shape-complete with BN folded,
# and without it quantize_static logs advice through the root logger on every call (which
# also installs a root handler where none exists); removed again from the quantized bytes
_PRE_PROCESSED = ("onnx.quant.pre_process", "onnxruntime.quant")
_INT_TYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT16: "int16",
              TensorProto.UINT16: "uint16"}


@dataclasses.dataclass(frozen=True)
class ExportStyle:
    """How a device wants the plan written (the profile's ``export`` section)."""

    io_precision: str = "fp32"  # fp32 | fp16: the graph's inputs and outputs
    int8_activations: str = "uint8"  # uint8 (asymmetric) | int8 (symmetric, zero point 0)


def check_plan(plan: Mapping[str, str], calibration_method: str) -> None:
    unknown = sorted({p for p in plan.values() if p not in PRECISIONS})
    if unknown:
        raise ExportError(f"precision plan uses {unknown}; allowed: {', '.join(PRECISIONS)}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {calibration_method!r}; allowed: "
                          f"{', '.join(CALIBRATION_METHODS)}")


def planned_precisions(units: Mapping[str, str | None], plan: Mapping[str, str]) -> dict[str, str]:
    """Node name -> the precision its unit is planned at (fp32 where it has no unit)."""
    return {name: plan.get(unit or "", "fp32") for name, unit in units.items()}


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader contract: get_next() until None. Fed under the
    model's own input name, in batches of its batch size where that is fixed (a user's ONNX
    file in `hwnas profile`: any input name, batch 1), else of CALIBRATION_BATCH."""

    def __init__(self, images: np.ndarray, model: onnx.ModelProto | None = None) -> None:
        self._images = images
        self._name, self._fixed = INPUT_NAME, None
        if model is not None:
            first = graph_inputs(model)[0]
            self._name = first.name
            dims = first.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                self._fixed = dims[0].dim_value
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        images, size = self._images, self._fixed or CALIBRATION_BATCH
        if self._fixed:  # whole batches only; too few samples for one: repeated
            if len(images) < size:
                images = np.resize(images, (size, *images.shape[1:]))
            images = images[:len(images) - len(images) % size]
        self._batches = iter([{self._name: images[i:i + size]}
                              for i in range(0, len(images), size)])


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _activation_overrides(graph: onnx.GraphProto, precisions: dict[str, str],
                          narrow: object, wide: object) -> dict[str, list[dict]]:
    """Tensor quantization overrides so that every quantized node sees and produces
    activations of its own width: a tensor takes its producer's width, and consumers of the
    other width get it through a conversion (Q/DQ to Q/DQ) of their own."""
    width = {"int8": narrow, "a16w8": wide}
    initializers = set(_initializers(graph))
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = {name for node in graph.node if precisions[node.name] in width
               for name in [*node.input, *node.output] if name and name not in initializers}
    overrides: dict[str, list[dict]] = {}
    for tensor in sorted(tensors):
        readers = [c for c in consumers.get(tensor, []) if precisions[c.name] in width]
        source = producer.get(tensor)
        if source is not None and precisions[source.name] in width:
            base = width[precisions[source.name]]
        elif readers:
            base = width[precisions[readers[0].name]]
        else:
            continue
        others = {c.name for c in readers if width[precisions[c.name]] is not base}
        entry: dict = {"quant_type": base}
        if others:
            other = wide if base is narrow else narrow
            entry["convert"] = {"quant_type": other, "recv_nodes": others}
        if base is wide or others:
            overrides[tensor] = [entry]
    return overrides


def _static_quantize(model: onnx.ModelProto, precisions: dict[str, str], calibration: np.ndarray,
                     method: str, style: ExportStyle, folder: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    symmetric = style.int8_activations == "int8"
    narrow = QuantType.QInt8 if symmetric else QuantType.QUInt8
    wide = QuantType.QInt16 if symmetric else QuantType.QUInt16
    overrides: dict = {}
    if any(p == "a16w8" for p in precisions.values()):
        # 16-bit Q/DQ are standard from opset 21; converting here spares onnxruntime's
        # automatic conversion (and its warning on the root logger)
        model = onnx.version_converter.convert_version(model, 21)
        overrides = _activation_overrides(model.graph, precisions, narrow, wide)
    _mark_pre_processed(model)
    source, target = folder / "float.onnx", folder / "qdq.onnx"
    onnx.save(model, str(source))
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    cached = {}
    if method != "minmax":
        cached = {"calibration_cache_path": str(_histogram_ranges(source, model, calibration,
                                                                  method, symmetric, folder))}
    quantize_static(
        str(source), str(target), _CalibrationReader(calibration, model),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=narrow, weight_type=QuantType.QInt8,
        calibrate_method=methods[method], **cached,
        nodes_to_quantize=[n for n, p in precisions.items() if p in STATIC],
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                       # no CalibMaxIntermediateOutputs: onnxruntime's MinMax calibrator
                       # (1.32) drops what it collected each time that count is reached, so
                       # 128 batches of 1 collected nothing and 100 used the last 36 only;
                       # minmax keeps two numbers per tensor and batch, and entropy and
                       # percentile ranges come from our own bounded histograms
                       "TensorQuantOverrides": overrides},
    )
    quantized = onnx.load(str(target))
    _drop_unused_initializers(quantized.graph)
    # the marker was for quantize_static only: the artifact does not claim a pre-processing
    kept = [p for p in quantized.metadata_props if p.key != _PRE_PROCESSED[0]]
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(kept)
    return quantized


def _histogram_ranges(source: Path, model: onnx.ModelProto, calibration: np.ndarray, method: str,
                      symmetric: bool, folder: Path) -> Path:
    """Entropy or percentile ranges, handed to quantize_static through its calibration cache.

    Entropy (KL) as TensorRT's calibrator finds it: 2048 histogram bins searched for the best
    128-bin quantization; quantize_static's own entropy calibrator has 128 bins for 128
    quantized bins, where the search can only pick the whole range (min-max again).
    Percentile: onnxruntime's defaults (2048 bins, 99.999th percentile). Both calibrators print
    their progress to stdout: kept off the user's terminal by a brief swap of sys.stdout
    (nothing else in a search prints to stdout while trials run)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    settings = {"entropy": (CalibrationMethod.Entropy,
                            {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": symmetric}),
                "percentile": (CalibrationMethod.Percentile, {"symmetric": symmetric})}
    calibrate_method, options = settings[method]
    calibrator = create_calibrator(
        source, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(folder / "augmented.onnx"), calibrate_method=calibrate_method,
        extra_options=options)
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(_CalibrationReader(calibration, model))
        ranges = calibrator.compute_data()
    path = folder / f"{method}-ranges.json"
    save_tensors_data(ranges, path)
    return path


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """The quantizer leaves behind the bounds of the Clip/Relu it folded into Q/DQ ranges;
    onnxruntime would warn about each one on every session load."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _mark_pre_processed(model: onnx.ModelProto) -> None:
    key, value = _PRE_PROCESSED
    if not any(p.key == key for p in model.metadata_props):
        model.metadata_props.add(key=key, value=value)


def _weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted op's weight (input 1)."""
    if node.op_type == "MatMul":
        return 1  # [K, N]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "ConvTranspose":
        return 1
    return 0  # Conv: [O, I, kh, kw]


def _weight_only(model: onnx.ModelProto, precisions: dict[str, str]) -> None:
    """int8 per-channel symmetric weights + DequantizeLinear before each planned weighted op."""
    graph = model.graph
    initializers = _initializers(graph)
    new_nodes: list[onnx.NodeProto] = []
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if precisions.get(node.name) == "int8_weight_only" and node.op_type in WEIGHTED_OPS:
            _bypass_activation_qdq(node, producers)
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if (precisions.get(node.name) == "int8_weight_only" and node.op_type in WEIGHTED_OPS
                and weight is not None and weight.data_type == TensorProto.FLOAT
                and len(weight.dims) >= 2):
            values = numpy_helper.to_array(weight)
            axis = _weight_axis(node)
            reduce = tuple(i for i in range(values.ndim) if i != axis)
            scale = np.maximum(np.abs(values).max(axis=reduce), 1e-12) / 127.0
            shape = [1] * values.ndim
            shape[axis] = -1
            quantized = np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8)
            stem = f"{node.name}_w"
            graph.initializer.extend([
                numpy_helper.from_array(quantized, f"{stem}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{stem}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{stem}_zero_point")])
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [f"{stem}_int8", f"{stem}_scale", f"{stem}_zero_point"],
                [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear", axis=axis))
            node.input[1] = f"{stem}_dequantized"
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_dead_nodes(graph)
    _drop_unused_initializers(graph)


def _bypass_activation_qdq(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> None:
    """A weight-only node reads float activations. Where its input is the Q/DQ'd output of
    a neighbouring int8 unit, it reads the tensor before that Q instead: in QDQ semantics
    (TensorRT's in particular) dequantized input + dequantized weights make an int8 layer."""
    dequantize = producers.get(node.input[0])
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return
    quantize = producers.get(dequantize.input[0])
    if quantize is not None and quantize.op_type == "QuantizeLinear":
        node.input[0] = quantize.input[0]


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (Q/DQ pairs a bypass left unused)."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        alive = [n for n in graph.node if any(out in read for out in n.output)]
        if len(alive) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(alive)


def realise_plan(model: onnx.ModelProto, units: Mapping[str, str | None], plan: Mapping[str, str],
                 calibration: np.ndarray, calibration_method: str = "minmax",
                 style: ExportStyle = ExportStyle()) -> onnx.ModelProto:
    """The float32 ``model`` with ``plan`` written into it; ``units`` from ``node_units``."""
    check_plan(plan, calibration_method)
    precisions = planned_precisions(units, plan)
    used = set(precisions.values())
    if used & set(STATIC):
        with tempfile.TemporaryDirectory(prefix="hwnas-qdq-") as folder:
            model = _static_quantize(model, precisions, calibration, calibration_method, style,
                                     Path(folder))
    if "int8_weight_only" in used:
        _weight_only(model, precisions)
    if "fp16" in used or style.io_precision == "fp16":
        model = make_islands(model, [n for n, p in precisions.items() if p == "fp16"],
                             io_fp16=style.io_precision == "fp16")
    return model


# --- reading a plan back from the bytes -----------------------------------------------------


def realised_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """Weighted node name -> the precision the graph actually gives it, read from the bytes
    alone: int8 / a16w8 (weights and activations through DequantizeLinear, by activation
    width), int8_weight_only (dequantized weights, float activations), fp16, fp32."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = _initializers(graph)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})

    def dequantized_from(name: str) -> str | None:
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        source = node.input[0]
        if source in initializers:
            return _INT_TYPES.get(initializers[source].data_type)
        quantizer = producers.get(source)
        if quantizer is not None and quantizer.op_type == "QuantizeLinear" and len(quantizer.input) > 2:
            zero_point = initializers.get(quantizer.input[2])
            if zero_point is not None:
                return _INT_TYPES.get(zero_point.data_type)
        return _INT_TYPES.get(types.get(source, 0))

    def constant(name: str) -> bool:
        node = producers.get(name)
        return name in initializers or (node is not None and node.op_type == "DequantizeLinear"
                                        and node.input[0] in initializers)

    result = {}
    for node in graph.node:
        # weighted: a constant weight (activation x activation MatMuls of attention are not)
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or not constant(node.input[1]):
            continue
        weight = dequantized_from(node.input[1])
        activation = dequantized_from(node.input[0])
        if weight in ("int8", "uint8"):
            if activation is None:
                result[node.name] = "int8_weight_only"
            else:
                result[node.name] = "a16w8" if activation in ("int16", "uint16") else "int8"
        elif types.get(node.input[1]) == TensorProto.FLOAT16 or types.get(node.input[0]) == TensorProto.FLOAT16:
            result[node.name] = "fp16"
        else:
            result[node.name] = "fp32"
    return result
