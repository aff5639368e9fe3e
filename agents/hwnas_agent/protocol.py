"""The wire protocol between the hwnas controller and the agent.

Standard library only: the controller imports this module too, so both sides agree on
field names, defaults and validation. HTTP + JSON; models travel as raw ONNX bytes
addressed by their sha256, or as several files addressed by their manifest's (manifest.py).
The measurement result the controller reads is defined here too (RESULT_FIELDS). Nothing
received is ever executed or unpickled: a request names a power source, and what that source
is (a sensor, or a meter program and its arguments) comes from the agent's own configuration
file on the device (config.py). Every request carries the agent's secret token
(``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from hwnas_agent.provider_options import provider_option_problem

PROTOCOL_VERSION = 2
PROTOCOL_HEADER = "X-Hwnas-Protocol"
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# a power source is named, never described, on the wire
SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")



class JobState(str, enum.Enum):
    """A job's state; the wire and the job folders carry the value. A str, so that the plain
    "done" of a record read back equals, and hashes as, JobState.DONE."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


JOB_STATES = tuple(state.value for state in JobState)
FINISHED_STATES = (JobState.DONE, JobState.FAILED, JobState.INTERRUPTED)
# the one definition of the runtime names: requests, profiles and the agent's runtime
# registry (runtimes/base.py) all read these
ONNXRUNTIME = "onnxruntime"
TENSORRT = "tensorrt"
GENAI = "genai"  # onnxruntime-genai: generation of a model folder (runtimes/genai.py)
RUNTIMES = (ONNXRUNTIME, TENSORRT, GENAI)
TENSORRT_FLAGS = ("fp16", "int8")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# the kinds of power source an agent configuration (and a profile's power section) may name,
# best first (board input before partial rails: the order detection tries them); the agent's
# sensor registry (power/base.py) is built from this list
NO_POWER = "none"
POWER_KINDS = ("ina3221", "pi5_pmic", "hwmon", "power_supply", "rapl", "nvml", "tegrastats",
               "command")
POWER_SOURCES = (NO_POWER,) + POWER_KINDS


class ProtocolError(Exception):
    """A request the agent refuses; carries the HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field  # the request field at fault, where one is

    def to_dict(self) -> Dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def is_sha256(text: Any) -> bool:
    return isinstance(text, str) and bool(SHA256_RE.match(text))


# -- one definition of every measurement setting ---------------------------------------------
# Each field of MeasureRequest names the device-profile section it is configured in and its
# key there, and carries its own check. The controller validates a profile's YAML with these
# very checks and builds requests from them: no second, hand-kept copy of the settings.
SECTIONS = ("runtime", "measurement", "power")


def _one_of(*allowed: str) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        return None if value in allowed else "one of " + ", ".join(allowed)
    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_range(low: int, high: int, note: str = "") -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        return None if _is_int(value) and low <= value <= high else \
            "an integer %d..%d%s" % (low, high, note)
    return check


def _number_range(low: float, high: float) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        return None if _is_number(value) and low <= float(value) <= high else \
            "a number %g..%g" % (low, high)
    return check


def _bool(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "true or false"


def _sha256(value: Any) -> Optional[str]:
    return None if is_sha256(value) else "64 lowercase hex digits"


def _provider_names(value: Any) -> Optional[str]:
    ok = isinstance(value, list) and value and all(isinstance(p, str) and p for p in value)
    return None if ok else "a non-empty list of provider names"


def _provider_options(value: Any) -> Optional[str]:
    ok = isinstance(value, list) and all(
        isinstance(o, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in o.items())
        for o in value)
    return None if ok else "a list of objects of strings, at most one per provider"


def _tensorrt_flags(value: Any) -> Optional[str]:
    ok = isinstance(value, list) and all(flag in TENSORRT_FLAGS for flag in value)
    return None if ok else "a list of " + ", ".join(TENSORRT_FLAGS)


def _source_name(value: Any) -> Optional[str]:
    ok = isinstance(value, str) and bool(SOURCE_NAME_RE.match(value))
    return None if ok else "'none' or the name of a power source in the agent's configuration"


def _cpu_list(value: Any) -> Optional[str]:
    ok = isinstance(value, list) and all(_is_int(c) and 0 <= c < 4096 for c in value)
    return None if ok else "a list of CPU numbers"


def _temperature_or_null(value: Any) -> Optional[str]:
    ok = value is None or (_is_number(value) and 0 < value < 150)
    return None if ok else "null or a temperature in °C between 0 and 150"


def _setting(section: Optional[str], check: Callable[[Any], Optional[str]], default: Any = None,
             key: Optional[str] = None, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A request field: where a device profile configures it (section, key) and its check."""
    metadata = {"section": section, "key": key, "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class MeasureRequest:
    """How to measure one model. Defaults follow trtexec/TFLite practice (see docs)."""

    model_sha256: str = _setting(None, _sha256, "")
    # -- runtime: section `runtime` of a device profile
    runtime: str = _setting("runtime", _one_of(*RUNTIMES), ONNXRUNTIME, key="name")
    execution_providers: List[str] = _setting("runtime", _provider_names,
                                              factory=lambda: ["CPUExecutionProvider"])
    # one options dict per execution provider, same order (may be shorter)
    provider_options: List[Dict[str, str]] = _setting("runtime", _provider_options, factory=list)
    # an NPU/GPU figure must never silently be a CPU figure
    disable_cpu_fallback: bool = _setting("runtime", _bool, False)
    # native TensorRT builder precision flags (the ONNX's Q/DQ nodes fix int8 placement)
    tensorrt_flags: List[str] = _setting("runtime", _tensorrt_flags, factory=list)
    intra_op_threads: int = _setting("runtime", _int_range(0, 1024, " (0 = runtime default)"), 1)
    inter_op_threads: int = _setting("runtime", _int_range(0, 1024, " (0 = runtime default)"), 1)
    graph_optimization: str = _setting("runtime", _one_of(*GRAPH_OPTIMIZATION_LEVELS), "all")
    # -- methodology: section `measurement`
    batch_size: int = _setting("measurement", _int_range(1, 65536), 1)
    warmup_iterations: int = _setting("measurement", _int_range(0, 10 ** 7), 10)
    warmup_seconds: float = _setting("measurement", _number_range(0.0, 3600.0), 0.5)
    min_iterations: int = _setting("measurement", _int_range(1, 10 ** 8), 100)
    min_seconds: float = _setting("measurement", _number_range(0.0, 36000.0), 2.0)
    rounds: int = _setting("measurement", _int_range(1, 1000), 5)
    unstable_cv: float = _setting("measurement", _number_range(0.0, 10.0), 0.10)
    timeout_s: float = _setting("measurement", _number_range(1.0, 86400.0), 600.0)
    seed: int = _setting("measurement", _int_range(0, 2 ** 31), 0)
    # pin the measuring process to these CPUs (empty: the OS decides)
    cpu_affinity: List[int] = _setting("measurement", _cpu_list, factory=list)
    # wait until every thermal zone is below this before starting (None: do not wait)
    cooldown_below_c: Optional[float] = _setting("measurement", _temperature_or_null, None)
    cooldown_timeout_s: float = _setting("measurement", _number_range(0.0, 86400.0), 300.0)
    # a rise of this many degrees, or a clock drop of this fraction, flags throttling
    thermal_rise_c: float = _setting("measurement", _number_range(0.0, 200.0), 10.0)
    clock_drop: float = _setting("measurement", _number_range(0.0, 1.0), 0.10)
    # a layer profile: after the timed rounds (which never run profiled), a session of its own
    # with the runtime's profiler runs layer_profile_runs inferences; the result's "layers"
    # gives each node's median time and share (runtimes/ort_layers.py)
    layer_profile: bool = _setting("measurement", _bool, False)
    layer_profile_runs: int = _setting("measurement", _int_range(1, 10000), 20)
    # generation (runtime genai; the others ignore them): each round appends a prompt of
    # prompt_tokens token ids, then produces generate_tokens tokens; a round is one iteration
    # (warmup_iterations, min_iterations count rounds). Their sum must fit the model's context
    prompt_tokens: int = _setting("measurement", _int_range(1, 2 ** 20), 128)
    generate_tokens: int = _setting("measurement", _int_range(2, 2 ** 20, " (the first token "
                                                                         "ends the prefill)"), 64)
    # -- power: section `power`; sampled during the timed phase, which extends until
    # power_min_samples exist. Only the source's name travels: its kind and options are the
    # agent's configuration (the profile's power.options go there, by `hwnas agent install`)
    power_source: str = _setting("power", _source_name, NO_POWER, key="source")
    power_min_samples: int = _setting("power", _int_range(2, 10 ** 6), 20, key="min_samples")
    idle_seconds: float = _setting("power", _number_range(0.0, 3600.0), 2.0)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "MeasureRequest":
        if not isinstance(data, dict):
            raise ProtocolError(400, "bad_request", "a measure request must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ProtocolError(
                400,
                "unknown_field",
                "unknown field(s) %s; allowed: %s" % (", ".join(unknown), ", ".join(sorted(fields))),
            )
        if "model_sha256" not in data:
            raise ProtocolError(400, "missing_field", "field 'model_sha256' is required")
        request = cls(**data)
        request._validate()
        return request

    @classmethod
    def from_sections(cls, model_sha256: str, sections: Dict[str, Dict[str, Any]]
                      ) -> "MeasureRequest":
        """A request from a device profile's sections ({section: {key: value}})."""
        values: Dict[str, Any] = {"model_sha256": model_sha256}
        for section, settings in sections.items():
            keys = {setting_key(f): f.name for f in section_fields(section)}
            for key, value in settings.items():
                if key not in keys:
                    raise ProtocolError(400, "unknown_field", "unknown setting %s.%s; allowed: %s"
                                        % (section, key, ", ".join(sorted(keys))))
                values[keys[key]] = value
        return cls.from_dict(values)

    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            expected = f.metadata["check"](getattr(self, f.name))
            if expected is not None:
                raise ProtocolError(400, "bad_field", "field '%s' = %r is not allowed; expected %s"
                                    % (f.name, getattr(self, f.name), expected), field=f.name)
        if len(self.provider_options) > len(self.execution_providers):
            raise ProtocolError(400, "bad_field", "field 'provider_options' has %d entries for %d "
                                "execution providers; at most one per provider"
                                % (len(self.provider_options), len(self.execution_providers)),
                                field="provider_options")
        for provider, options in zip(self.execution_providers, self.provider_options):
            for key, value in sorted(options.items()):
                problem = provider_option_problem(provider, key, value)
                if problem is not None:
                    raise ProtocolError(400, "bad_field", "field 'provider_options': " + problem,
                                        field="provider_options")


def section_fields(section: str) -> List["dataclasses.Field[Any]"]:
    """The request fields a device profile configures in ``section``, in order."""
    if section not in SECTIONS:
        raise ValueError("unknown section %r; sections: %s" % (section, ", ".join(SECTIONS)))
    return [f for f in dataclasses.fields(MeasureRequest) if f.metadata["section"] == section]


def setting_key(field: "dataclasses.Field[Any]") -> str:
    """The key of a request field in its device-profile section."""
    return field.metadata["key"] or field.name


def check_setting(field_name: str, value: Any) -> Optional[str]:
    """None if ``value`` is allowed for the field, else what is expected."""
    field = next(f for f in dataclasses.fields(MeasureRequest) if f.name == field_name)
    return field.metadata["check"](value)


# -- the measurement result: one definition, read by the controller ---------------------------
# A done job's "measurement" is the worker's report (worker.measure_file): rounds, provenance,
# thermal and more travel whole as the agent's report; these are the fields the controller
# reads from it, by their path in the report. A renamed or retyped field fails here, on both
# sides' tests, not as a KeyError deep in the controller.
@dataclasses.dataclass(frozen=True)
class ResultField:
    path: Tuple[str, ...]  # keys from the report's top down
    kind: str  # one of _RESULT_KINDS
    required: bool = True
    default: Any = None  # when absent and not required


_RESULT_KINDS: Dict[str, Callable[[Any], Any]] = {
    "number": lambda v: float(v) if _is_number(v) else _wrong("a number"),
    "integer": lambda v: int(v) if _is_int(v) else _wrong("an integer"),
    "bool": lambda v: v if isinstance(v, bool) else _wrong("true or false"),
    "sha256": lambda v: v if is_sha256(v) else _wrong("64 lowercase hex digits"),
    "texts": lambda v: tuple(v) if isinstance(v, list) and all(isinstance(t, str) for t in v)
    else _wrong("a list of strings"),
    "interval": lambda v: (float(v[0]), float(v[1])) if isinstance(v, list) and len(v) == 2
    and all(_is_number(x) for x in v) else _wrong("two numbers"),
    "object": lambda v: dict(v) if isinstance(v, dict) else _wrong("an object"),
}
RESULT_FIELDS: Dict[str, ResultField] = {
    "model_sha256": ResultField(("model_sha256",), "sha256"),
    "latency_ms_p50": ResultField(("latency_ms", "p50"), "number"),
    "latency_ms_p90": ResultField(("latency_ms", "p90"), "number"),
    "latency_ms_p99": ResultField(("latency_ms", "p99"), "number"),
    "latency_ms_mean": ResultField(("latency_ms", "mean"), "number"),
    "latency_ms_std": ResultField(("latency_ms", "std"), "number"),
    "latency_cv": ResultField(("latency_ms", "cv"), "number"),
    "latency_ms_p50_ci95": ResultField(("latency_ms", "ci95_p50"), "interval"),
    "iterations": ResultField(("iterations",), "integer"),
    "unstable": ResultField(("unstable",), "bool"),
    "execution_providers": ResultField(("runtime", "execution_providers"), "texts"),
    # a simulator's figure (Qualcomm's HTP simulated on x86): never a device latency
    "emulated": ResultField(("runtime", "emulated"), "bool", False, False),
    "peak_rss_mb": ResultField(("peak_rss_mb",), "number", False),
    # the power summary (power/sampler.py summarize); null when none was asked for
    "power": ResultField(("power",), "object", False),
    # per-node time (request.layer_profile): absent unless asked for; {"error": why} where the
    # runtime cannot profile its layers
    "layers": ResultField(("layers",), "object", False),
    # generation (runtime genai, generation.py); absent from other measurements
    "prompt_tokens": ResultField(("generation", "prompt_tokens"), "integer", False),
    "generate_tokens": ResultField(("generation", "generate_tokens"), "integer", False),
    "generation_rounds": ResultField(("generation", "rounds"), "integer", False),
    "ttft_ms_p50": ResultField(("generation", "ttft_ms", "p50"), "number", False),
    "ttft_ms_p90": ResultField(("generation", "ttft_ms", "p90"), "number", False),
    "prefill_tokens_per_s": ResultField(("generation", "prefill_tokens_per_s", "p50"), "number",
                                        False),
    "decode_tokens_per_s": ResultField(("generation", "decode_tokens_per_s", "p50"), "number",
                                       False),
    "decode_tokens_per_s_ci95": ResultField(("generation", "decode_tokens_per_s", "ci95_p50"),
                                            "interval", False),
    "decode_cv": ResultField(("generation", "decode_tokens_per_s", "cv"), "number", False),
    # power over the decode windows only (power/sampler.decode_power)
    "decode_power_mean_w": ResultField(("power", "decode", "mean_w"), "number", False),
    "decode_power_peak_w": ResultField(("power", "decode", "peak_w"), "number", False),
    "energy_mj_per_token": ResultField(("power", "decode", "energy_mj_per_token"), "number",
                                       False),
}


def _wrong(expected: str) -> Any:
    raise ValueError(expected)


def read_result(report: Any) -> Dict[str, Any]:
    """The controller's fields of a done job's measurement (RESULT_FIELDS); ValueError naming
    the field and what it should be when one is missing or of the wrong kind."""
    if not isinstance(report, dict):
        raise ValueError("the measurement is not a JSON object")
    values: Dict[str, Any] = {}
    for name, field in RESULT_FIELDS.items():
        value: Any = report
        for key in field.path:
            value = value.get(key) if isinstance(value, dict) else None
        where = ".".join(field.path)
        if value is None:
            if field.required:
                raise ValueError("the measurement has no '%s'" % where)
            values[name] = field.default
            continue
        try:
            values[name] = _RESULT_KINDS[field.kind](value)
        except ValueError as exc:
            raise ValueError("the measurement's '%s' = %r is not %s" % (where, value, exc)) from None
    return values


def error_message(payload: Optional[Dict[str, Any]]) -> str:
    """The human message of an agent error response, whatever its shape."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return "%s: %s" % (error.get("code", "error"), error.get("message", ""))
    return repr(payload)
