"""Where the time goes: a measurement's layer profile (per-node time from the agent's
profiled runs, agents/hwnas_agent/runtimes/ort_layers.py) mapped to the model's units, and
the `hwnas profile --layers` table.

The runtime times the nodes it runs, which are not always the graph's: onnxruntime fuses a
Conv with its activation and names the result after the activation's output
(``/layer1/layer1.0/relu/Relu_output_0_nchwc``), suffixes nodes it rewrites (``_token_25``,
``/duplicated``) and adds its own (``ReorderOutput``). ``resolve_node`` finds the graph node
each timed node stands for (a fused Conv: the Conv above the activation); its unit is then
the unit -> node map of a model hwnas exported (``ExportedModel.node_units``), or, for any
other ONNX file, its module path read from the exporter's node name
(``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``) or from the dynamo exporter's
``name_scopes`` metadata, Q/DQ and other nodes of no module
taking their neighbours' (``hwnas.export.onnx.follow_units``). What stays unmapped is grouped
by op type, in parentheses.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx

_ORT_SUFFIX = re.compile(r"(?:_token_\d+|/duplicated)+$")
_FUSED_SUFFIX = "_nchwc"
# onnxruntime runs an fp16 node its EP has no fp16 kernel for in fp32, behind Casts its
# InsertCastTransformer adds; their tensors are named this + the original tensor's name, and a
# node fused after them (a Conv in NCHWc layout) is named after such a tensor
_INSERTED_CAST = "InsertedPrecisionFreeCast_"
# ops onnxruntime fuses into the node before them (Conv + activation)
_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "HardSwish"}


@dataclasses.dataclass(frozen=True)
class UnitTime:
    """One unit's share of a profiled run: the sum of its nodes' median times."""

    unit: str
    median_us: float
    share: float  # of the summed node time
    nodes: int
    op_types: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UnitTime":
        return cls(str(data["unit"]), float(data["median_us"]), float(data["share"]),
                   int(data["nodes"]), tuple(data["op_types"]))


UNIT_TIMES_ATTR = "unit_times"  # a study's user attribute: role (base | best) -> its profile


def kept_unit_times(user_attrs: Mapping[str, Any]
                    ) -> list[tuple[str, Mapping[str, Any], tuple[UnitTime, ...]]]:
    """(label, layer profile summary, units) of a search's base and best model, as the search
    kept them (hwnas/search/unit_profile.py): what layers_table shows."""
    kept = user_attrs.get(UNIT_TIMES_ATTR) or {}
    return [(kept[role]["label"], kept[role]["layers"],
             tuple(UnitTime.from_dict(u) for u in kept[role]["units"]))
            for role in ("base", "best") if role in kept]


def module_path(node_name: str) -> str | None:
    """The module path in a TorchScript export's node name: '/layer1/layer1.0/conv1/Conv' ->
    'layer1.0.conv1' (each scope repeats its parent's path; a child extends it), None for a
    name without scopes."""
    parts = node_name.strip("/").split("/")[:-1] if node_name.startswith("/") else []
    path = ""
    for part in parts:
        atoms = part.split(".")
        for overlap in range(len(atoms) - 1, -1, -1):
            head = ".".join(atoms[:overlap])
            if overlap == 0 or path == head or path.endswith("." + head):
                tail = ".".join(atoms[overlap:])
                path = f"{path}.{tail}" if path else tail
                break
    return path or None


class GraphIndex:
    """A graph's nodes by name and by the tensors they produce."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = {n.name: n for n in graph.node}
        self.producer = {out: n for n in graph.node for out in n.output}

    def resolve_node(self, name: str, op_type: str) -> str | None:
        """The graph node a timed node stands for, or None."""
        if name in self.nodes:
            return name
        bare = _ORT_SUFFIX.sub("", name)
        if bare in self.nodes:
            return bare
        if bare.endswith(_FUSED_SUFFIX):
            bare = bare[:-len(_FUSED_SUFFIX)]
        bare = bare.removeprefix(_INSERTED_CAST)
        node = self.producer.get(bare)
        if node is None:
            return None
        # a fusion named after its last node's output: walk up to the op that was timed
        found = node
        for _ in range(3):
            if found.op_type == op_type or found.op_type not in _ACTIVATIONS or not found.input:
                break
            above = self.producer.get(found.input[0])
            if above is None:
                break
            found = above
        return found.name if found.op_type == op_type else node.name


def node_module(node: onnx.NodeProto) -> str | None:
    """The module a node was exported from: the dynamo exporter's ``name_scopes`` metadata
    (full module paths, then the op's own name: the deepest module is the one before it),
    else the TorchScript node name's scopes."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(prop.value)[:-1] if isinstance(s, str) and s]
            except (ValueError, SyntaxError):
                scopes = []
            if scopes:
                return scopes[-1]
    return module_path(node.name)


def module_units(graph: onnx.GraphProto) -> dict[str, str | None]:
    """Node name -> module path, for an ONNX file hwnas did not export: read from the
    exporter's scopes (``node_module``); nodes without one take their neighbours' (Q/DQ,
    weight DequantizeLinear)."""
    from hwnas.export.onnx import follow_units

    paths = {n.name: node_module(n) for n in graph.node}
    return follow_units(graph, {name: path for name, path in paths.items() if path})


def unit_times(layers: Mapping[str, Any], units: Mapping[str, str | None],
               graph: onnx.GraphProto) -> list[UnitTime]:
    """The layer profile's nodes summed per unit (``units``: graph node -> unit, as
    ExportedModel.node_units or ``module_units`` give it), largest first."""
    index = GraphIndex(graph)
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for node in layers.get("nodes", []):
        found = index.resolve_node(node["name"], node["op_type"])
        unit = units.get(found) if found is not None else None
        if unit is None:
            unit = module_path(_ORT_SUFFIX.sub("", node["name"])) if found is None else None
        grouped.setdefault(unit or f"({node['op_type']})", []).append(node)
    return _ranked(grouped)


def file_unit_times(layers: Mapping[str, Any] | None, file: str | Path) -> tuple[UnitTime, ...]:
    """A layer profile's nodes per module of the ONNX file measured (none without a profile)."""
    if not layers or layers.get("error"):
        return ()
    graph = onnx.load(str(file), load_external_data=False).graph
    return tuple(unit_times(layers, module_units(graph), graph))


def op_type_times(layers: Mapping[str, Any]) -> list[UnitTime]:
    """The layer profile's nodes summed per op type, largest first."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for node in layers.get("nodes", []):
        grouped.setdefault(node["op_type"], []).append(node)
    return _ranked(grouped)


def _ranked(grouped: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[UnitTime]:
    rows = [UnitTime(unit, sum(n["median_us"] for n in nodes), sum(n["share"] for n in nodes),
                     len(nodes), tuple(sorted({n["op_type"] for n in nodes})))
            for unit, nodes in grouped.items()]
    return sorted(rows, key=lambda r: (-r.median_us, r.unit))


def overhead_line(layers: Mapping[str, Any]) -> str:
    """What the per-node figures are: medians of profiled runs, and what profiling cost."""
    profiled, headline = layers.get("profiled_run_ms_p50"), layers.get("headline_ms_p50")
    cost = f" ({layers['profiler_overhead']:+.0%})" if layers.get("profiler_overhead") \
        is not None else ""
    return (f"median of {layers.get('runs')} profiled runs; a profiled run took "
            f"{profiled:.3f} ms (p50) against the headline p50 of {headline:.3f} ms{cost}"
            if profiled and headline else f"median of {layers.get('runs')} profiled runs")


def layers_table(blocks: Sequence[tuple[str, Mapping[str, Any] | None, Sequence[UnitTime]]],
                 top: int) -> str:
    """The top ``top`` units of each (label, layer profile, unit times): side by side, a
    column per label (the rows: every label's top units, by their largest share), when each
    label has more than half of those units (a model and its precision variants), else one
    block each."""
    text: list[str] = []
    ready = []
    for label, layers, units in blocks:
        if not layers or layers.get("error"):
            why = (layers or {}).get("error", "the agent sent no layer profile")
            text.append(f"{label}: no per-layer times: {why}")
        else:
            ready.append((label, layers, units))
    if not ready:
        return "\n".join(text)
    names = [{u.unit for u in units} for _, _, units in ready]
    tops = {u.unit for _, _, units in ready for u in units[:top]}
    if len(ready) > 1 and all(len(tops & found) > 0.5 * len(tops) for found in names):
        text += _side_by_side(ready, top)
    else:
        for label, layers, units in ready:
            text += [f"{label} ({overhead_line(layers)}):"]
            text += _grid(["unit", "median us", "share", "nodes", "ops"],
                          [[u.unit, f"{u.median_us:.1f}", f"{u.share:.1%}", str(u.nodes),
                            ",".join(u.op_types)] for u in units[:top]])
    return "\n".join(text)


def _side_by_side(ready: Sequence[tuple[str, Mapping[str, Any], Sequence[UnitTime]]],
                  top: int) -> list[str]:
    by_label = [{u.unit: u for u in units} for _, _, units in ready]
    order: dict[str, float] = {}
    for units in (units for _, _, units in ready):
        for unit in units[:top]:
            order[unit.unit] = max(order.get(unit.unit, 0.0), unit.share)
    rows = sorted(order, key=lambda u: -order[u])  # each label's top ones, all shown
    header = ["unit"] + [f"{label} us / share" for label, _, _ in ready]
    lines = [[unit] + [f"{found[unit].median_us:.1f} / {found[unit].share:.1%}"
                       if unit in found else "-" for found in by_label] for unit in rows]
    notes = [f"{label}: {overhead_line(layers)}" for label, layers, _ in ready]
    return _grid(header, lines) + notes


def _grid(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
            for r in [header, ["-" * w for w in widths], *lines]]
