"""The wire protocol between the hwnas controller and the agent.

Standard library only: the controller imports this module too, so both sides agree on
field names, defaults and validation. HTTP + JSON; models travel as raw ONNX bytes
addressed by their sha256. Nothing received is ever executed or unpickled.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Hwnas-Protocol"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

JOB_STATES = ("queued", "running", "done", "failed", "interrupted")
FINISHED_STATES = ("done", "failed", "interrupted")
RUNTIMES = ("onnxruntime", "tensorrt")
TENSORRT_FLAGS = ("fp16", "int8")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
POWER_SOURCES = ("none", "ina3221", "tegrastats", "pi5_pmic", "hwmon", "rapl", "nvml",
                 "power_supply", "command")


class ProtocolError(Exception):
    """A request the agent refuses; carries the HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> Dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def is_sha256(text: Any) -> bool:
    return isinstance(text, str) and bool(SHA256_RE.match(text))


@dataclasses.dataclass(frozen=True)
class MeasureRequest:
    """How to measure one model. Defaults follow trtexec/TFLite practice (see docs)."""

    model_sha256: str
    runtime: str = "onnxruntime"
    execution_providers: List[str] = dataclasses.field(
        default_factory=lambda: ["CPUExecutionProvider"]
    )
    # one options dict per execution provider, same order (may be shorter)
    provider_options: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    # an NPU/GPU figure must never silently be a CPU figure
    disable_cpu_fallback: bool = False
    # native TensorRT builder precision flags (the ONNX's Q/DQ nodes fix int8 placement)
    tensorrt_flags: List[str] = dataclasses.field(default_factory=list)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    batch_size: int = 1
    warmup_iterations: int = 10
    warmup_seconds: float = 0.5
    min_iterations: int = 100
    min_seconds: float = 2.0
    rounds: int = 5
    unstable_cv: float = 0.10
    timeout_s: float = 600.0
    seed: int = 0
    # power: sampled during the timed phase, which extends until power_min_samples exist
    power_source: str = "none"
    power_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    power_min_samples: int = 20
    idle_seconds: float = 2.0
    # pin the measuring process to these CPUs (empty: the OS decides)
    cpu_affinity: List[int] = dataclasses.field(default_factory=list)
    # wait until every thermal zone is below this before starting (None: do not wait)
    cooldown_below_c: Optional[float] = None
    cooldown_timeout_s: float = 300.0
    # a rise of this many degrees, or a clock drop of this fraction, flags throttling
    thermal_rise_c: float = 10.0
    clock_drop: float = 0.10

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

    def _validate(self) -> None:
        def bad(field: str, allowed: str) -> ProtocolError:
            return ProtocolError(
                400, "bad_field", "field '%s' = %r is not allowed; expected %s" % (
                    field, getattr(self, field), allowed)
            )

        if not is_sha256(self.model_sha256):
            raise bad("model_sha256", "64 lowercase hex digits")
        if self.runtime not in RUNTIMES:
            raise bad("runtime", "one of " + ", ".join(RUNTIMES))
        if not (isinstance(self.execution_providers, list) and self.execution_providers
                and all(isinstance(p, str) for p in self.execution_providers)):
            raise bad("execution_providers", "a non-empty list of provider names")
        if not (isinstance(self.provider_options, list)
                and len(self.provider_options) <= len(self.execution_providers)
                and all(isinstance(o, dict) for o in self.provider_options)):
            raise bad("provider_options", "a list of objects, at most one per provider")
        if not (isinstance(self.tensorrt_flags, list)
                and all(flag in TENSORRT_FLAGS for flag in self.tensorrt_flags)):
            raise bad("tensorrt_flags", "a list of " + ", ".join(TENSORRT_FLAGS))
        if self.power_source not in POWER_SOURCES:
            raise bad("power_source", "one of " + ", ".join(POWER_SOURCES))
        if not isinstance(self.power_options, dict):
            raise bad("power_options", "an object of the source's options")
        if not (isinstance(self.cpu_affinity, list) and all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096
                for c in self.cpu_affinity)):
            raise bad("cpu_affinity", "a list of CPU numbers")
        if self.cooldown_below_c is not None and not (
                isinstance(self.cooldown_below_c, (int, float)) and 0 < self.cooldown_below_c < 150):
            raise bad("cooldown_below_c", "null or a temperature in °C between 0 and 150")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise bad("graph_optimization", "one of " + ", ".join(GRAPH_OPTIMIZATION_LEVELS))
        if not isinstance(self.disable_cpu_fallback, bool):
            raise bad("disable_cpu_fallback", "true or false")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1024):
                raise bad(name, "an integer 0..1024 (0 = runtime default)")
        for name, low, high in (("batch_size", 1, 65536), ("warmup_iterations", 0, 10**7),
                                ("min_iterations", 1, 10**8), ("rounds", 1, 1000), ("seed", 0, 2**31),
                                ("power_min_samples", 2, 10**6)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise bad(name, "an integer %d..%d" % (low, high))
        for name, low, high in (("warmup_seconds", 0.0, 3600.0), ("min_seconds", 0.0, 36000.0),
                                ("unstable_cv", 0.0, 10.0), ("timeout_s", 1.0, 86400.0),
                                ("idle_seconds", 0.0, 3600.0), ("cooldown_timeout_s", 0.0, 86400.0),
                                ("thermal_rise_c", 0.0, 200.0), ("clock_drop", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and low <= float(value) <= high):
                raise bad(name, "a number %g..%g" % (low, high))


def error_message(payload: Optional[Dict[str, Any]]) -> str:
    """The human message of an agent error response, whatever its shape."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return "%s: %s" % (error.get("code", "error"), error.get("message", ""))
    return repr(payload)
