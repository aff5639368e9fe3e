"""ONNX export of a (pruned) PyTorch model, and which precision unit each ONNX node belongs to.

A precision unit is a stage (a group of modules) or a single layer. Plans name units; the
exporters name nodes. The mapping between them must survive what the exporters do to a
model: BN folded into the preceding conv (weights renamed ``onnx::Conv_12`` by TorchScript),
scopes flattened to unqualified names (``/features/features.3/conv/conv.0/conv.0.0/Conv``),
modules called twice (``relu_1``), functional calls on a module's weights (attention's
``out_proj``), and wrappers around the whole model. ``node_modules`` reads three signals, in
order of trust: the parameter an op consumes (dynamo keeps parameter names even after
folding BN), the dynamo exporter's ``name_scopes`` metadata, and the TorchScript scope path,
rebuilt into a full module name and checked against the model's own module names.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from torch import nn

from hwnas.disk import no_space
from hwnas.errors import ExportError
from hwnas.export.graph import INPUT_NAME, OUTPUT_NAME, WEIGHTED_OPS
from hwnas.export.precision import ExportStyle, realise_plan, realised_precisions

HEAD_UNIT = "head"
OPSET = 17
# ops whose weights a precision plan is about; the rest of a unit follows them
# modules that own weights consumed by weighted ops: these are the layer units
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.MultiheadAttention)
_PARAMETER_SUFFIXES = (".weight", ".in_proj_weight", ".bias", ".in_proj_bias")
_REPEATED_CALL = re.compile(r"_\d+$")
# torch's ONNX exporters keep process-wide state (the TorchScript one asserts it is not
# already exporting; dynamo's tracing context is global): with several devices, trials run
# in threads, and two exports at once corrupt each other and the other threads' autograd
_EXPORT_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def precision_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> module, for every module a layer-granularity plan can name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


def precision_units(model: nn.Module, stages: dict[str, list[nn.Module]],
                    granularity: str) -> dict[str, str]:
    """Module name -> precision unit. Stage units cover every submodule of a stage; layers
    outside all stages form the unit 'head'. Layer units are the weighted layers' names."""
    layers = precision_layers(model)
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


def _parameter_owner(name: str, modules: set[str]) -> str | None:
    for suffix in _PARAMETER_SUFFIXES:
        if name.endswith(suffix) and name[:-len(suffix)] in modules:
            return name[:-len(suffix)]
    return None


def _deepest(candidates: list[str], modules: set[str]) -> str | None:
    for name in reversed(candidates):
        if name in modules:
            return name
        base = _REPEATED_CALL.sub("", name)  # the second call of a module: relu_1
        if base in modules:
            return base
    return None


def _dynamo_scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if isinstance(s, str) and s]
            except (ValueError, SyntaxError):
                return []
    return []


def _torchscript_scopes(node_name: str, modules: set[str]) -> list[str]:
    """'/features/features.3/conv/conv.0/conv.0.0/Conv' -> ['features', 'features.3',
    'features.3.conv', 'features.3.conv.0', 'features.3.conv.0.0'].

    Each scope is the module's name from its last non-numeric part on (TorchScript's
    "unqualified" name): a child extends its parent by the parts the parent's path does not
    already end with. Containers never called (a ModuleDict, a ModuleList indexed by hand)
    leave no scope of their own: where no reading names a module, the module below the
    parent whose path ends with the part is taken."""
    parts = node_name.strip("/").split("/")[:-1]
    paths: list[str] = []
    parent = ""
    for part in parts:
        atoms = part.split(".")
        guesses = []
        for overlap in range(len(atoms) - 1, -1, -1):
            head = ".".join(atoms[:overlap])
            if overlap == 0 or parent == head or parent.endswith("." + head):
                tail = ".".join(atoms[overlap:])
                guesses.append(f"{parent}.{tail}" if parent else tail)
        full = next((g for g in guesses if g in modules or _REPEATED_CALL.sub("", g) in modules),
                    None) or _under_uncalled(parent, part, modules) or guesses[-1]
        paths.append(full)
        parent = full
    return paths


def _under_uncalled(parent: str, part: str, modules: set[str]) -> str | None:
    """A module reached through containers whose forward never ran (ModuleDict, ModuleList
    indexed by hand) has no scope for them: the shortest module path below ``parent`` that
    ends with ``part``."""
    prefix = parent + "." if parent else ""
    found = [m for m in modules if m.startswith(prefix) and (m == part or m.endswith("." + part))]
    return min(found, key=len) if found else None


def node_modules(graph: onnx.GraphProto, modules: set[str]) -> dict[str, str | None]:
    """ONNX node name -> the deepest module of the model it was exported from, or None."""
    result: dict[str, str | None] = {}
    for node in graph.node:
        owner = None
        if node.op_type in WEIGHTED_OPS or node.op_type in ("Transpose", "Identity"):
            owner = next((o for o in (_parameter_owner(i, modules) for i in node.input) if o), None)
        if owner is None:
            owner = _deepest(_dynamo_scopes(node), modules)
        if owner is None:
            owner = _deepest(_torchscript_scopes(node.name, modules), modules)
        result[node.name] = owner
    return result


def _unit_of(module: str | None, module_units: dict[str, str]) -> str | None:
    while module:
        if module in module_units:
            return module_units[module]
        module = module.rpartition(".")[0]
    return None


def node_units(graph: onnx.GraphProto, module_units: dict[str, str]) -> dict[str, str | None]:
    """ONNX node name -> precision unit: the unit of its module or of the nearest enclosing
    module that is one; nodes of no unit (a Flatten between stages) take their producer's."""
    modules = set(module_units)
    ancestors = {a for m in modules for a in _prefixes(m)}
    owners = node_modules(graph, modules | ancestors)
    producer_unit: dict[str, str | None] = {}
    result: dict[str, str | None] = {}
    for node in graph.node:
        unit = _unit_of(owners[node.name], module_units)
        if unit is None:
            unit = next((producer_unit[i] for i in node.input if producer_unit.get(i)), None)
        result[node.name] = unit
        for output in node.output:
            producer_unit[output] = unit
    return result


def follow_units(graph: onnx.GraphProto, units: Mapping[str, str | None]) -> dict[str, str | None]:
    """Units for a graph derived from the one ``units`` describes: nodes keep theirs; nodes
    added since (Q/DQ pairs, Casts) take the unit of the node that reads their output, or else
    of the node whose output they read."""
    readers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
        for name in node.output:
            producer[name] = node.name
    result = {n.name: units.get(n.name) for n in graph.node}
    changed = True
    while changed:  # chains of added nodes (Q -> DQ -> Cast) resolve one link per pass
        changed = False
        for node in graph.node:
            if node.name in units or result[node.name] is not None:
                continue
            around = [r for out in node.output for r in readers.get(out, [])]
            around += [producer[i] for i in node.input if i in producer]
            unit = next((result[n] for n in around if result.get(n) is not None), None)
            if unit is not None:
                result[node.name] = unit
                changed = True
    return result


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def check_unit_coverage(graph: onnx.GraphProto, units: dict[str, str | None],
                        plan_unit_names: list[str]) -> None:
    """Every planned unit must own at least one weighted op, or the plan cannot be realised."""
    owning = {units[n.name] for n in graph.node if n.op_type in WEIGHTED_OPS}
    missing = sorted(set(plan_unit_names) - owning)
    if missing:
        raise ExportError(f"precision plan names units {missing} that own no Conv/Gemm/MatMul of "
                          f"the exported graph; the model's modules and the export disagree")


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Plans, quantizers and fp16 converters address nodes by name: give every node one."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_hwnas_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def inline_shared_initializers(model: onnx.ModelProto) -> None:
    """TorchScript deduplicates equal constants (all-zero biases after BN folding) and hands
    them out through Identity nodes; quantizers and fp16 converters expect each weighted
    op's weight and bias to be an initializer of its own."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
        survivors = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(survivors)
        del graph.node[:]
        graph.node.extend(kept)


def export_fp32(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                exporter: str = "auto") -> str:
    """Write the float32 ONNX; returns the exporter used ('torchscript' or 'dynamo')."""
    model.eval()
    example = torch.zeros((1, *input_shape))
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        used = "dynamo" if exporter == "dynamo" else "torchscript"
        if used == "torchscript":
            try:
                # ~50x faster than dynamo here, folds BN, and keeps module scopes in node names
                torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                                  opset_version=OPSET, dynamo=False)
            except Exception as exc:
                if exporter == "torchscript" or no_space(exc) is not None:
                    raise  # a full disk is not the exporter's fault: dynamo would hide it
                log.info("TorchScript export failed (%s); using dynamo", exc)
                used = "dynamo"
        if used == "dynamo":
            batch = torch.export.Dim("batch")
            argument = next(iter(_forward_arguments(model)), "x")
            # a batch of 2: torch.export specialises a dimension seen as 1 to the constant 1
            torch.onnx.export(model, (example.expand(2, *input_shape),), str(path),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={argument: {0: batch}},
                              opset_version=max(OPSET, 18), dynamo=True, verbose=False)
    onnx.checker.check_model(str(path))
    return used


def _forward_arguments(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """The bytes at ``path`` and what the export knows about them."""

    path: Path
    exporter: str  # torchscript | dynamo
    node_units: tuple[tuple[str, str | None], ...]  # node name -> precision unit (final graph)
    node_precisions: tuple[tuple[str, str], ...]  # weighted node -> precision realised in the bytes


def build_onnx(model: nn.Module, input_shape: tuple[int, ...], plan: Mapping[str, str],
               module_units: dict[str, str], calibration: np.ndarray, out_path: Path,
               calibration_method: str = "minmax", style: ExportStyle | None = None,
               exporter: str = "auto") -> ExportedModel:
    """Export ``model`` and realise ``plan``; the bytes at ``out_path`` are the artifact."""
    style = style or ExportStyle()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = out_path.with_name(out_path.name + ".fp32.onnx")
    try:
        used = export_fp32(model, input_shape, fp32_path, exporter)
        graph_model = onnx.load(str(fp32_path))
        fp32_path.unlink()
        name_unnamed_nodes(graph_model)
        inline_shared_initializers(graph_model)
        units = node_units(graph_model.graph, module_units)
        unknown = sorted(set(plan) - set(module_units.values()))
        if unknown:
            raise ExportError(f"precision plan names units {unknown} the model does not have; "
                              f"its units: {', '.join(plan_units(module_units))}")
        check_unit_coverage(graph_model.graph, units,
                            [u for u, p in plan.items() if p != "fp32"])
        if any(p != "fp32" for p in plan.values()) or style.io_precision != "fp32":
            graph_model = realise_plan(graph_model, units, plan, calibration, calibration_method,
                                       style)
            units = follow_units(graph_model.graph, units)
        onnx.save(graph_model, str(out_path))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"exporting the candidate failed: {type(exc).__name__}: {exc}") from exc
    finally:
        fp32_path.unlink(missing_ok=True)
    return ExportedModel(out_path, used, tuple(units.items()),
                         tuple(realised_precisions(graph_model).items()))
