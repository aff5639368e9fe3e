"""Accelerator compatibility screening: can the device's first execution provider run the
whole graph, and if not, which ops of which precision units stop it?

A device whose profile disables CPU fallback (Qualcomm's HTP, a GPU) measures nothing for a
graph the accelerator cannot take whole. Rather than let that fail a trial after minutes of
fine-tuning, the search asks the agent first: one short job with fallback *allowed*, whose
report says which node went to which provider and the provider's reason for each refusal.
The candidate is rejected with those reasons (op, node, unit, precision) before fine-tuning.
The figure this job times is never used: with fallback allowed, or on a simulator, it is not
the device's latency.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

from hwnas_agent.protocol import NO_POWER, ONNXRUNTIME

from hwnas.errors import MeasurementError
from hwnas.records import Artifact, Measurement

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile
    from hwnas.export.onnx import ExportedModel
    from hwnas.remote.client import AgentClient

CPU = "CPUExecutionProvider"
QNN = "QNNExecutionProvider"
# Q/DQ at the graph's inputs and outputs: the QNN EP hands them to the CPU when fallback is
# allowed (its offload_graph_io_quantization default) and keeps them when it is not; asked
# to keep them, the screening sees the graph as the measurement will
_SCREEN_OPTIONS = {QNN: {"offload_graph_io_quantization": "0"}}


@dataclasses.dataclass(frozen=True)
class RefusedNode:
    """One node the accelerator would not take, and what the plan made of it."""

    name: str
    op_type: str
    provider: str  # where it would run instead
    reason: str | None  # the provider's own words, where its log gives them
    unit: str | None  # the precision unit it belongs to
    precision: str | None  # that unit's planned precision

    def describe(self) -> str:
        where = f" in unit {self.unit} ({self.precision})" if self.unit else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.op_type} '{self.name}'{where}{why}"


@dataclasses.dataclass(frozen=True)
class CompatibilityScreen:
    provider: str  # the accelerator screened for
    refused: tuple[RefusedNode, ...]
    refused_total: int  # the agent lists at most 200
    emulated: bool  # the agent ran a simulator (its timing means nothing)
    measurement: Measurement | None  # the screening job's report (never a latency to use)
    failure: str | None = None  # the accelerator could not load the graph at all

    @property
    def compatible(self) -> bool:
        return self.refused_total == 0 and self.failure is None

    def reason(self, limit: int = 5) -> str:
        """Why the candidate cannot run on the accelerator, for the trial's record."""
        if self.failure is not None:
            return f"{self.provider} could not load the graph: {self.failure}"
        if self.compatible:
            return f"runs entirely on {self.provider}"
        listed = "; ".join(node.describe() for node in self.refused[:limit])
        more = self.refused_total - min(limit, len(self.refused))
        return (f"{self.refused_total} node(s) cannot run on {self.provider} (CPU fallback is "
                f"disabled on this device): {listed}" + (f"; and {more} more" if more > 0 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "compatible": self.compatible,
                "refused_total": self.refused_total, "emulated": self.emulated,
                "failure": self.failure, "refused": [dataclasses.asdict(n) for n in self.refused]}


def needs_screening(profile: "DeviceProfile") -> bool:
    """An accelerator with CPU fallback disabled: a graph it cannot take whole cannot run."""
    runtime = profile.runtime
    return (runtime.name == ONNXRUNTIME and runtime.disable_cpu_fallback
            and runtime.execution_providers[0] != CPU)


def screening_request(profile: "DeviceProfile", sha256: str) -> Any:
    """The profile's request with fallback allowed, one timed inference and no power."""
    request = profile.measure_request(sha256)
    options = [dict(o) for o in request.provider_options]
    options += [{}] * (len(request.execution_providers) - len(options))
    for index, provider in enumerate(request.execution_providers):
        options[index] = {**_SCREEN_OPTIONS.get(provider, {}), **options[index]}
    return dataclasses.replace(
        request, disable_cpu_fallback=False, provider_options=options, warmup_iterations=0,
        warmup_seconds=0.0, min_iterations=1, min_seconds=0.0, rounds=1, power_source=NO_POWER,
        cooldown_below_c=None)


def _refused(report: Mapping[str, Any], provider: str, exported: "ExportedModel | None",
             plan: Mapping[str, str]) -> tuple[list[RefusedNode], int]:
    assignment = (report.get("runtime") or {}).get("node_assignment")
    if assignment is None:
        raise MeasurementError(
            "the agent's onnxruntime cannot tell which node ran where (it needs onnxruntime "
            ">= 1.23 for session.record_ep_graph_assignment_info); upgrade it on the device")
    units = dict(exported.node_units) if exported is not None else {}
    nodes = []
    for node in assignment.get("elsewhere", []):
        unit = units.get(node["name"])
        nodes.append(RefusedNode(node["name"], node["op_type"], node["provider"],
                                 node.get("reason"), unit, plan.get(unit) if unit else None))
    total = int(assignment.get("elsewhere_total", len(nodes)))
    if provider not in (report.get("runtime") or {}).get("execution_providers", []):
        total = max(total, 1)  # the provider took nothing at all
    return nodes, total


def screen_compatibility(client: "AgentClient", profile: "DeviceProfile", artifact: Artifact,
                         exported: "ExportedModel | None" = None,
                         plan: Mapping[str, str] | None = None) -> CompatibilityScreen:
    """Ask the device's agent whose nodes its accelerator refuses; ``exported`` and ``plan``
    name the unit and precision of each refused node."""
    client.ensure_model(artifact)
    provider = profile.runtime.execution_providers[0]
    try:
        measurement = client.measure(screening_request(profile, artifact.sha256))
    except MeasurementError as exc:
        # even with fallback allowed the provider failed on it (a QNN graph that does not
        # finalize, a compile past the time limit): it does not run there either way
        return CompatibilityScreen(provider, (), 0, False, None, str(exc))
    refused, total = _refused(measurement.agent_report, provider, exported, plan or {})
    return CompatibilityScreen(provider, tuple(refused), total, measurement.emulated, measurement)


def known_emulation(profile: "DeviceProfile") -> str | None:
    """Why a local device's figures will be a simulator's (None if they will not, or if the
    device is remote: its agent says so in each result)."""
    if profile.connection.kind != "local" or profile.runtime.name != ONNXRUNTIME:
        return None
    from hwnas_agent.runtimes.onnxruntime import emulation

    providers = list(profile.runtime.execution_providers)
    options = [dict(o) for o in profile.runtime.provider_options]
    return emulation(providers, options + [{}] * (len(providers) - len(options)))
