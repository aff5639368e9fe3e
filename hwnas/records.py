"""The central chain: Candidate -> Artifact -> Measurement, each frozen and JSON-able.

Everything else in hwnas is a function between these records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping

from hwnas.errors import ExportError, MeasurementError


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One compression of the base model: what the search proposes for a trial."""

    keep_ratios: tuple[tuple[str, float], ...]  # stage -> fraction of channels kept
    pruning_criterion: str  # "l1" | "saliency"
    global_pruning_ratio: float  # channels removed globally after width, by importance rank
    precision_plan: tuple[tuple[str, str], ...]  # precision unit (stage or layer) -> precision

    @classmethod
    def build(cls, keep_ratios: Mapping[str, float], pruning_criterion: str,
              global_pruning_ratio: float, precision_plan: Mapping[str, str]) -> "Candidate":
        return cls(_pairs(keep_ratios), pruning_criterion, float(global_pruning_ratio),
                   _pairs(precision_plan))

    @property
    def is_quantized(self) -> bool:
        return any(precision != "fp32" for _, precision in self.precision_plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep_ratios": dict(self.keep_ratios),
            "pruning_criterion": self.pruning_criterion,
            "global_pruning_ratio": self.global_pruning_ratio,
            "precision_plan": dict(self.precision_plan),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls.build(data["keep_ratios"], data["pruning_criterion"],
                         data["global_pruning_ratio"], data["precision_plan"])

    def summary(self) -> str:
        keep = " ".join(f"{k}={v:g}" for k, v in self.keep_ratios)
        plan = " ".join(f"{k}:{v}" for k, v in self.precision_plan)
        return (f"keep[{keep}] {self.pruning_criterion} global={self.global_pruning_ratio:g} "
                f"prec[{plan}]")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """The exact ONNX bytes a device runs, addressed by their sha256."""

    path: str
    sha256: str
    size_bytes: int
    channels: tuple[tuple[str, int], ...]  # prunable layer -> output channels after pruning
    parameters: int

    @classmethod
    def from_file(cls, path: str | Path, channels: Mapping[str, int], parameters: int) -> "Artifact":
        data = Path(path).read_bytes()
        return cls(str(path), hashlib.sha256(data).hexdigest(), len(data), _pairs(channels),
                   int(parameters))

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def read_bytes(self) -> bytes:
        data = Path(self.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ExportError(f"{self.path} changed on disk since export (sha256 mismatch)")
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size_bytes": self.size_bytes,
                "channels": dict(self.channels), "parameters": self.parameters}


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
    # None where the device has no power source, or too few samples were taken
    power_mean_w: float | None = None
    energy_mj_per_inference: float | None = None

    @classmethod
    def from_agent(cls, device: str, report: Mapping[str, Any]) -> "Measurement":
        try:
            latency = report["latency_ms"]
            return cls(
                device=device,
                model_sha256=report["model_sha256"],
                latency_ms_p50=float(latency["p50"]),
                latency_ms_p90=float(latency["p90"]),
                latency_ms_p99=float(latency["p99"]),
                latency_ms_mean=float(latency["mean"]),
                latency_ms_std=float(latency["std"]),
                latency_cv=float(latency["cv"]),
                latency_ms_p50_ci95=(float(latency["ci95_p50"][0]), float(latency["ci95_p50"][1])),
                iterations=int(report["iterations"]),
                unstable=bool(report["unstable"]),
                execution_providers=tuple(report["runtime"]["execution_providers"]),
                agent_report=dict(report),
                power_mean_w=(report.get("power") or {}).get("mean_w"),
                energy_mj_per_inference=(report.get("power") or {}).get("energy_mj_per_inference"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MeasurementError(f"the agent on {device} sent a malformed measurement "
                                   f"({exc!r}); check that hwnas and hwnas-agent versions match") from None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, **self.agent_report}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        report = {k: v for k, v in data.items() if k != "device"}
        return cls.from_agent(data["device"], report)
