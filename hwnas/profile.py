"""`hwnas profile`: measure ONNX models as they are, side by side, on one device (model
folders of onnxruntime-genai: hwnas/profile_generation.py).

Models whose inputs have free dimensions besides the batch get them fixed by an input-shape
override (the agent measures static shapes only, as a deployment runs them); the fixed copy
is a new model with its own sha256. Precision variants of each model are made here too
(int8, fp16), calibrated on the search space's own data or on random data, as stated.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx

from hwnas.errors import ConfigError, ExportError, HwnasError
from hwnas.export.graph import graph_inputs
from hwnas.layers import file_unit_times

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile
    from hwnas.layers import UnitTime
    from hwnas.records import Artifact, Measurement

SHAPE = re.compile(r"^(?:(?P<name>[^=]+)=)?(?P<dims>\d+(?:[x,]\d+)*)$")


@dataclasses.dataclass(frozen=True)
class InputShape:
    """One sample's shape (without the batch) for an input, or the only input (name None)."""

    name: str | None
    dims: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "InputShape":
        found = SHAPE.match(text.strip())
        if found is None:
            raise ConfigError(f"--input-shape {text!r}: write one sample's shape without the "
                              f"batch, e.g. 3x224x224, or NAME=3x224x224 for a model with "
                              f"several inputs")
        dims = tuple(int(d) for d in re.split("[x,]", found.group("dims")))
        if any(d < 1 for d in dims):
            raise ConfigError(f"--input-shape {text!r}: dimensions must be >= 1")
        return cls(found.group("name"), dims)


def free_dimensions(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Input name -> positions (after the batch) that are not fixed numbers."""
    found = {}
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        free = [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]
        if free:
            found[value.name] = free
    return found


def fix_input_shapes(model: onnx.ModelProto, shapes: Sequence[InputShape], source: Path
                     ) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have these sample shapes (the batch stays free)."""
    inputs = graph_inputs(model)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_name = {v.name: v for v in fixed.graph.input}
    for shape in shapes:
        if shape.name is None and len(inputs) != 1:
            raise ConfigError(f"--input-shape: {source} has inputs {[v.name for v in inputs]}; "
                              f"name the one meant, e.g. {inputs[0].name}=3x224x224")
        name = shape.name or inputs[0].name
        if name not in {v.name for v in inputs}:
            raise ConfigError(f"--input-shape: {source} has no input {name!r}; its inputs: "
                              f"{[v.name for v in inputs]}")
        dims = by_name[name].type.tensor_type.shape.dim
        if len(dims) != len(shape.dims) + 1:
            raise ConfigError(f"--input-shape {'x'.join(map(str, shape.dims))}: input {name!r} of "
                              f"{source} has {len(dims) - 1} dimensions besides the batch")
        for position, (dim, wanted) in enumerate(zip(list(dims)[1:], shape.dims), start=1):
            if dim.HasField("dim_value") and dim.dim_value != wanted:
                raise ConfigError(f"--input-shape: dimension {position} of input {name!r} is "
                                  f"fixed at {dim.dim_value} in {source}, not {wanted}")
            dim.ClearField("dim_param")
            dim.dim_value = wanted
    del fixed.graph.value_info[:]  # inferred again by the runtime from the fixed inputs
    return fixed


def sample_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The one float input's sample shape (for calibration data)."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ConfigError(f"--precision: variants are made for models with one input; this one "
                          f"has {[v.name for v in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in list(dims)[1:]):
        raise ConfigError("--precision: the input has free dimensions; fix them with "
                          "--input-shape to calibrate")
    return tuple(d.dim_value for d in list(dims)[1:])


@dataclasses.dataclass(frozen=True)
class ProfileRow:
    model: str  # the file as given
    precision: str  # "as given", or the variant made here
    artifact: "Artifact"
    measurement: "Measurement"
    note: str = ""
    units: tuple["UnitTime", ...] = ()  # the layer profile per unit (--layers), largest first

    def to_dict(self) -> dict[str, Any]:
        found = {"model": self.model, "precision": self.precision, "note": self.note,
                 "artifact": self.artifact.to_dict(), "measurement": self.measurement.to_dict()}
        if self.measurement.layers is not None:
            from hwnas.layers import op_type_times

            found["layers"] = {"units": [u.to_dict() for u in self.units],
                               "op_types": [u.to_dict() for u in
                                            op_type_times(self.measurement.layers)]}
        return found


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    rows: tuple[ProfileRow, ...]
    calibration: str | None  # how int8 variants were calibrated, when any was made


AS_GIVEN = "as given"


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None


def _calibration(space_path: Path | None, shape: tuple[int, ...], samples: int,
                 source: Path) -> tuple[np.ndarray, str]:
    if space_path is None:
        data = np.random.default_rng(0).standard_normal((samples, *shape)).astype(np.float32)
        return data, (f"int8 calibrated on {samples} random normal inputs (no --calibration "
                      f"given): its latency is representative, its accuracy is not")
    from hwnas.config import load_search_space
    from hwnas.config.load import naming_the_file
    from hwnas.data import load_task

    with naming_the_file(space_path):
        task = load_task(load_search_space(space_path).dataset)
    if tuple(task.input_shape) != tuple(shape):
        raise ConfigError(f"--calibration {space_path}: its data set gives samples of shape "
                          f"{list(task.input_shape)}, {source} takes {list(shape)}")
    return task.calibration(samples), (f"int8 calibrated on {samples} training images of "
                                       f"{space_path} ({task.name}, its preprocessing)")


# quantized operators of onnxruntime's QOperator format (QLinear*, com.microsoft's QGemm,
# QAttention ...) and its integer / low-bit kernels: the graph already computes in integers
# even with no DequantizeLinear before a weight
_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized", "QGemm",
                "QAttention", "QuantizeLinear", "DequantizeLinear"}
# weights stored below float32 (an fp32 model keeps shapes and indices as int64)
_REDUCED_TYPES = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16",
                  onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                  onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4"}


def check_float32(model: onnx.ModelProto, path: Path) -> None:
    """Precision variants are written into a float32 model: writing int8 or fp16 into a
    graph that already holds them stacks a second set of casts or quantizers on the first
    (onnxruntime then refuses the model for two nodes of one name), and the figure would be
    of neither precision."""
    from hwnas.export.precision import realised_precisions

    found = realised_precisions(model)
    held = sorted({p for p in found.values() if p != "fp32"})
    reduced = sum(p != "fp32" for p in found.values())
    if not held:  # what the plan reader does not know (int4, bf16, QOperator graphs)
        held = sorted({f"{_REDUCED_TYPES[t.data_type]} weights" for t in model.graph.initializer
                       if t.data_type in _REDUCED_TYPES})
        integer = sorted({n.op_type for n in model.graph.node
                          if n.op_type in _INTEGER_OPS or n.op_type.startswith("QLinear")})
        held += [f"quantized operators ({', '.join(integer)})"] if integer else []
    if held:
        what = ", ".join(held)
        counted = f" ({reduced} of its {len(found)} weighted nodes below fp32)" if reduced else ""
        raise ConfigError(f"{path}: already holds {what}{counted}; --precision makes variants "
                          f"from a float32 model: give its fp32 export, or leave out "
                          f"--precision to measure it as given")


def make_variant(model: onnx.ModelProto, precision: str, calibration: np.ndarray) -> onnx.ModelProto:
    """The whole model at ``precision``, written by the search's own precision code."""
    from hwnas.export.onnx import name_unnamed_nodes
    from hwnas.export.precision import realise_plan

    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    name_unnamed_nodes(variant)
    units = {node.name: "model" for node in variant.graph.node}
    return realise_plan(variant, units, {"model": precision}, calibration)


def profile_models(paths: Sequence[Path], profile: "DeviceProfile", precisions: Sequence[str],
                   shapes: Sequence[InputShape], calibration_space: Path | None,
                   samples: int, layers: bool = False) -> ProfileResult:
    from hwnas.records import Artifact
    from hwnas.remote.device import open_device

    folders = [Path(path) for path in paths if Path(path).is_dir()]
    if folders:
        if layers:
            raise ConfigError("--layers: per-layer times are for ONNX files measured per "
                              "inference; a model folder is measured generating and has none: "
                              "leave out --layers")
        if len(folders) != len(paths):
            raise ConfigError("give ONNX files or onnxruntime-genai model folders, not both: "
                              "their figures are of different kinds (per inference, per token)")
        from hwnas.profile_generation import profile_folders

        return ProfileResult(tuple(ProfileRow(name, AS_GIVEN, artifact, measurement)
                                   for name, artifact, measurement
                                   in profile_folders(folders, profile, precisions, shapes)), None)
    if precisions:
        from hwnas.export.precision import PRECISIONS
    unknown = sorted(set(precisions) - set(PRECISIONS)) if precisions else []
    if unknown:
        raise ConfigError(f"--precision {','.join(precisions)}: unknown {unknown}; allowed: "
                          f"{', '.join(PRECISIONS)}")
    variants = list(dict.fromkeys(p for p in precisions if p != "fp32"))  # fp32: as given
    entries: list[tuple[str, str, Path, str]] = []
    statement = None
    with tempfile.TemporaryDirectory(prefix="hwnas-profile-") as folder:
        for index, path in enumerate(paths):
            path = Path(path)
            model = _load(path)
            given = path
            if shapes:
                model = fix_input_shapes(model, shapes, path)
                given = Path(folder) / f"{index}-{path.stem}.fixed.onnx"
                onnx.save(model, str(given))
            free = free_dimensions(model)
            if free:
                name, positions = next(iter(free.items()))
                raise ConfigError(f"{path}: input {name!r} has free dimensions at positions "
                                  f"{positions} besides the batch; the agent measures fixed "
                                  f"shapes: give --input-shape (e.g. 3x224x224)")
            entries.append((path.name, AS_GIVEN, given, ""))
            if variants:
                check_float32(model, path)
            for precision in variants:
                calibration = np.zeros((1, *sample_shape(model)), np.float32)
                if precision in ("int8", "a16w8"):
                    calibration, statement = _calibration(calibration_space, sample_shape(model),
                                                          samples, path)
                variant = Path(folder) / f"{index}-{path.stem}.{precision}.onnx"
                try:
                    onnx.save(make_variant(model, precision, calibration), str(variant))
                except HwnasError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported with the model's name
                    raise ExportError(f"{path}: making its {precision} variant failed: "
                                      f"{type(exc).__name__}: {exc}") from None
                note = "" if precision in profile.precisions else \
                    f"{profile.name} does not list {precision} among its precisions"
                entries.append((path.name, precision, variant, note))
        rows = []
        with open_device(profile) as client:
            for name, precision, file, note in entries:
                artifact = Artifact.from_file(file, {}, 0)
                client.ensure_model(artifact)
                request = profile.measure_request(artifact.sha256)
                if layers:  # profiled runs after the timed ones (the agent's ort_layers.py)
                    request = dataclasses.replace(request, layer_profile=True)
                measurement = client.measure(request)
                rows.append(ProfileRow(name, precision, dataclasses.replace(artifact, path=""),
                                       measurement, note, file_unit_times(measurement.layers, file)))
    return ProfileResult(tuple(rows), statement)


def layers_text(result: ProfileResult, top: int) -> str:
    """The top units of each model and precision (hwnas.layers.layers_table)."""
    from hwnas.layers import layers_table

    return layers_table([(f"{r.model} {r.precision}", r.measurement.layers, r.units)
                         for r in result.rows], top)


def profile_table(result: ProfileResult, device: str) -> str:
    """Side by side; each variant's p90 also as a ratio of its model as given."""
    from hwnas.profile_generation import generation_table, is_generation

    if is_generation(result):
        return generation_table(result, device)
    given = {r.model: r.measurement.latency_ms_p90 for r in result.rows if r.precision == AS_GIVEN}
    header = ["model", "precision", "MB", "p50 ms", "p90 ms", "p99 ms", "CV", "vs given", "note"]
    lines = []
    for row in result.rows:
        m = row.measurement
        ratio = "" if row.precision == AS_GIVEN else f"x{m.latency_ms_p90 / given[row.model]:.2f}"
        note = "; ".join(filter(None, [row.note, "UNSTABLE (CV above threshold)" if m.unstable else ""]))
        lines.append([row.model, row.precision, f"{row.artifact.size_mb:.3f}",
                      f"{m.latency_ms_p50:.4f}", f"{m.latency_ms_p90:.4f}", f"{m.latency_ms_p99:.4f}",
                      f"{m.latency_cv:.3f}", ratio, note])
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    first = result.rows[0].measurement
    text = []
    if any(r.measurement.emulated for r in result.rows):
        from hwnas.remote.check import emulated_what

        emulated = next(r.measurement for r in result.rows if r.measurement.emulated)
        text.append(f"{emulated_what(emulated).upper()} on {device}: these latencies are not a "
                    f"device latency ({emulated.agent_report.get('runtime', {}).get('emulation')})")
    text += [f"on {device} ({', '.join(first.execution_providers)}):"]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header, ["-" * w for w in widths], *lines]]
    if result.calibration:
        text.append(result.calibration)
    return "\n".join(text)
