"""ONNX export and mixed precision: one QDQ model per precision plan.

Each precision unit (a stage, or a single layer) is int8 or fp32. Units planned fp32 have
their nodes excluded from onnxruntime's static QDQ quantization; calibration uses real
training images of the task.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch
from torch import nn

from hwnas.errors import ExportError
from hwnas.models import prunable_layers

INPUT_NAME, OUTPUT_NAME = "input", "logits"
HEAD_UNIT = "head"
CALIBRATION_BATCH = 32
# torch's ONNX exporters keep process-wide state (the TorchScript one asserts it is not
# already exporting; dynamo's tracing context is global): with several devices, trials run
# in threads, and two exports at once corrupt each other and the other threads' autograd
_EXPORT_LOCK = threading.Lock()


def precision_units(model: nn.Module, stages: dict[str, list[nn.Module]],
                    granularity: str) -> dict[str, str]:
    """Module name -> precision unit. Stage units cover every submodule of a stage; layers
    outside all stages form the unit 'head'. Layer units are the prunable layers' names."""
    layers = prunable_layers(model)
    if granularity == "layer":
        return {name: name for name in layers}
    names = {id(module): name for name, module in model.named_modules()}
    units: dict[str, str] = {}
    for stage, modules in stages.items():
        for module in modules:
            for sub_name, _ in module.named_modules(prefix=names[id(module)]):
                units[sub_name] = stage
    for name in layers:
        units.setdefault(name, HEAD_UNIT)
    return units


def plan_units(units: dict[str, str]) -> list[str]:
    """The units a precision plan must cover, in a stable order."""
    return sorted(set(units.values()))


def node_units(graph: onnx.GraphProto, module_units: dict[str, str]) -> dict[str, str | None]:
    """ONNX node name -> precision unit, from its weight's name (dynamo exporter) or its
    module scope (TorchScript exporter); other nodes take the unit of their producer."""
    producer_unit: dict[str, str | None] = {}
    result: dict[str, str | None] = {}
    for node in graph.node:
        unit = None
        for name in node.input:
            if name.endswith(".weight") and name[:-len(".weight")] in module_units:
                unit = module_units[name[:-len(".weight")]]
                break
        if unit is None:
            for scope in reversed(node.name.strip("/").split("/")[:-1]):
                if scope in module_units:
                    unit = module_units[scope]
                    break
        if unit is None:
            unit = next((producer_unit[i] for i in node.input if producer_unit.get(i)), None)
        result[node.name] = unit
        for output in node.output:
            producer_unit[output] = unit
    return result


def export_fp32(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    model.eval()
    example = torch.zeros((1, *input_shape))
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # the TorchScript exporter: ~50x faster than dynamo here and keeps module scopes
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"},
                                                                        OUTPUT_NAME: {0: "batch"}},
                              opset_version=17, dynamo=False)
        except Exception:
            logging.getLogger(__name__).info("TorchScript export failed; using dynamo")
            batch = torch.export.Dim("batch")
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}},
                              dynamo=True, verbose=False)
    onnx.checker.check_model(str(path))


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader contract: get_next() until None."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{INPUT_NAME: images[i:i + CALIBRATION_BATCH]}
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - part of the contract, unused by MinMax
        raise NotImplementedError


def quantize_plan(fp32_path: Path, out_path: Path, plan: dict[str, str],
                  module_units: dict[str, str], calibration: np.ndarray) -> list[str]:
    """Static QDQ int8 for the units planned int8; returns the names of nodes kept fp32."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph = onnx.load(str(fp32_path)).graph
    units = node_units(graph, module_units)
    unknown = sorted(set(plan) - set(units.values()))
    if unknown:
        raise ExportError(f"precision plan names units {unknown} that no ONNX node belongs to")
    excluded = [name for name, unit in units.items() if plan.get(unit or "", "fp32") == "fp32"]
    root = logging.getLogger()
    level = root.level
    # onnxruntime logs a pre-processing hint on the root logger for every call; the export is
    # already shape-complete (BN folded, static shapes but the batch)
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32_path), str(out_path), _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
        )
    finally:
        root.setLevel(level)
    return excluded


def build_onnx(model: nn.Module, input_shape: tuple[int, ...], plan: dict[str, str],
               module_units: dict[str, str], calibration: np.ndarray, out_path: Path) -> Path:
    """Export ``model`` and realise ``plan``; the bytes at ``out_path`` are the artifact."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = out_path.with_suffix(".fp32.onnx")
    try:
        export_fp32(model, input_shape, fp32_path)
        if any(precision != "fp32" for precision in plan.values()):
            quantize_plan(fp32_path, out_path, plan, module_units, calibration)
            fp32_path.unlink()
        else:
            fp32_path.replace(out_path)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"exporting the candidate failed: {exc}") from exc
    return out_path


def count_qdq(path: Path) -> dict[str, int]:
    """Quantize/DequantizeLinear counts: how much of the graph is int8."""
    ops: Iterable[str] = (n.op_type for n in onnx.load(str(path)).graph.node)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for op in ops:
        if op in counts:
            counts[op] += 1
    return counts
