"""What a device measured for one artifact (Measurement, with its PowerReading) and how
closely a candidate's outputs follow its fp32 parent's (OutputFidelity): frozen, JSON-able
records of the chain in hwnas/records.py.

A Measurement keeps the agent's JSON whole (``to_dict``) and reads its figures from it, so
studies stored by any earlier hwnas read back the same; the metric registry
(hwnas/metrics.py) names which attribute each metric reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from hwnas_agent.protocol import read_result

from hwnas.errors import MeasurementError


@dataclasses.dataclass(frozen=True)
class PowerReading:
    """The power figures of one measurement, and how they were obtained: a figure is never
    shown without its sensor, what it covers, its rate, sample count and idle baseline."""

    source: str  # the sensor kind (ina3221, tegrastats, rapl, nvml, command, ...)
    covers: str  # what the figure measures: board input, module rails, CPU package, ...
    rate_hz: float
    samples: int  # samples in the timed phase
    mean_w: float
    peak_w: float | None
    idle_w: float | None  # the idle baseline, sampled before the timed phase
    idle_samples: int
    energy_mj_per_inference: float  # total: mean power x time per inference
    energy_mj_per_inference_above_idle: float | None
    method: str | None = None  # how energy was obtained (the sensor's counter, or integration)
    scope: str = "partial"  # board_input | partial | model (a computed figure, not a sensor)
    figure: str = ""  # the rail or domain the watts are (e.g. VIN, psys)

    def energy(self, basis: str) -> float | None:
        return self.energy_mj_per_inference if basis == "total" \
            else self.energy_mj_per_inference_above_idle

    @classmethod
    def from_agent(cls, power: Mapping[str, Any]) -> "PowerReading":
        method = power.get("energy_method") or power.get("integration") or power.get("method")
        return cls(
            source=str(power["kind"]), covers=str(power.get("covers", "")),
            rate_hz=float(power.get("rate_hz") or 0.0), samples=int(power["samples"]),
            mean_w=float(power["mean_w"]), peak_w=_float(power.get("peak_w")),
            idle_w=_float(power.get("idle_w")), idle_samples=int(power.get("idle_samples", 0)),
            energy_mj_per_inference=float(power["energy_mj_per_inference"]),
            energy_mj_per_inference_above_idle=_float(
                power.get("energy_mj_per_inference_above_idle")),
            method=str(method) if method is not None else None,
            scope=str(power.get("scope") or "partial"), figure=str(power.get("figure") or ""))

    def describe(self) -> str:
        idle = f", idle {self.idle_w:.2f} W over {self.idle_samples} samples" \
            if self.idle_w is not None else ""
        figure = f" {self.figure}" if self.figure else ""
        scope = "a MODEL, not a sensor" if self.scope == "model" else self.scope.replace("_", " ")
        return (f"{self.source}{figure} ({self.covers}; {scope}), {self.samples} samples at "
                f"{self.rate_hz:g} Hz{idle}")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What the agent measured for one artifact on one device, with its provenance."""

    device: str
    model_sha256: str
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    latency_ms_std: float
    latency_cv: float
    latency_ms_p50_ci95: tuple[float, float]
    iterations: int
    unstable: bool
    execution_providers: tuple[str, ...]
    agent_report: Mapping[str, Any]  # the agent's full JSON: provenance, rounds, runtime
    # None where the request asked for no power (power.source: none)
    power: PowerReading | None = None
    power_error: str | None = None  # why a power figure that was asked for is missing
    # a simulator's figure (Qualcomm's HTP simulated on x86): never a device latency
    emulated: bool = False
    # the measuring worker process's peak resident memory (the agent's peak_rss_mb: runtime,
    # model and buffers); None in measurements of agents from before it was reported
    peak_memory_mb: float | None = None
    # per-node time of profiled runs after the timed ones (measurement.layer_profile), as the
    # agent sent it (runtimes/ort_layers.py); None where none was asked for. hwnas/layers.py
    # maps its nodes to the model's units
    layers: Mapping[str, Any] | None = None
    # generation (the agent's runtime genai); None for other measurements
    prompt_tokens: int | None = None
    generate_tokens: int | None = None
    generation_rounds: int | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p90: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None  # median of the rounds
    decode_tokens_per_s_ci95: tuple[float, float] | None = None
    decode_cv: float | None = None
    # power over the decode windows alone; None without a power source
    decode_power_mean_w: float | None = None
    decode_power_peak_w: float | None = None
    energy_mj_per_token: float | None = None

    @property
    def power_mean_w(self) -> float | None:
        return self.power.mean_w if self.power else None

    @property
    def energy_mj_per_inference(self) -> float | None:
        return self.power.energy_mj_per_inference if self.power else None

    @classmethod
    def from_agent(cls, device: str, report: Mapping[str, Any]) -> "Measurement":
        try:
            # the result schema is the agent protocol's (RESULT_FIELDS): one definition
            values = read_result(report)
            reported_power = values.pop("power")
            power, power_error = None, None
            if reported_power:
                if reported_power.get("mean_w") is None or reported_power.get("error"):
                    power_error = str(reported_power.get("error") or "no mean power reported")
                else:
                    power = PowerReading.from_agent(reported_power)
            peak = values.pop("peak_rss_mb", None)  # the agent's name: its process's peak RSS
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(device=device, agent_report=dict(report), power=power,
                       power_error=power_error, peak_memory_mb=_float(peak),
                       **{name: value for name, value in values.items() if name in fields})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MeasurementError(f"the agent on {device} sent a malformed measurement "
                                   f"({exc!r}); check that hwnas and hwnas-agent versions match") from None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, **self.agent_report}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        report = {k: v for k, v in data.items() if k != "device"}
        return cls.from_agent(data["device"], report)


@dataclasses.dataclass(frozen=True)
class OutputFidelity:
    """How closely a candidate's outputs follow its fp32 parent's (the same pruned, fine-tuned
    model exported without a precision plan), sample by sample on held-out data."""

    cosine_mean: float
    cosine_min: float
    top1_agreement: float  # fraction of samples whose arg-max class is the parent's
    samples: int
    runtime: str  # where the candidate's outputs were computed
    emulated: bool = False  # a simulator computed them (Qualcomm's HTP on x86)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OutputFidelity":
        return cls(float(data["cosine_mean"]), float(data["cosine_min"]),
                   float(data["top1_agreement"]), int(data["samples"]), str(data["runtime"]),
                   bool(data.get("emulated", False)))

    def summary(self) -> str:
        return (f"cosine {self.cosine_mean:.5f} (min {self.cosine_min:.4f}), top-1 agreement "
                f"{self.top1_agreement:.1%} on {self.samples} samples, {self.runtime}")
