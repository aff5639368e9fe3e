"""Budgets -> Optuna constraints, and measurements -> objective values, in one place.

Optuna's convention: a constraint value <= 0 is met. Each is the relative distance to its
budget as the metric registry defines it (hwnas/metrics.py): a ceiling's excess, value /
limit - 1, or a floor's shortfall, 1 - value / limit, so that budgets of different units
weigh alike. Power and energy come only from the device's sensor: a budget on a figure the
measurement does not have fails the measurement, it is never guessed or skipped. The
output-fidelity budget is a floor on cosine similarity: its excess is that of the distance
from identical outputs, (1 - cosine) / (1 - cosine_min) - 1, known once the deployed bytes
exist (after fine-tuning).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hwnas import metrics
from hwnas.errors import ConfigError, MeasurementError
from hwnas.measurement import Measurement, OutputFidelity
from hwnas.records import Artifact

if TYPE_CHECKING:
    from hwnas.config.models import Budgets, DeviceProfile, SearchSpace

# a rejected candidate was never evaluated: this stands in for its accuracy so that the
# sampler sees it as bad; reports show it as "not evaluated", never as a real accuracy
NOT_EVALUATED = 0.0


def effective_budgets(space: "SearchSpace", device: "DeviceProfile") -> "Budgets":
    """The search space's budgets win; the device profile's defaults fill the gaps."""
    from hwnas.config.models import Budgets

    return Budgets(**{**device.budgets.set_values(), **space.budgets.set_values()})


def _wanted(space: "SearchSpace", space_path: Path, device: "DeviceProfile", device_path: Path,
            names: list[str]) -> list[tuple[str, Path]]:
    """(key, file) of every budget or objective on one of ``names``: the space's, then the
    device profile's defaults the space does not override."""
    wanted = [(f"budgets.{name}", space_path) for name in names
              if space.budgets.limit(name) is not None]
    wanted += [(f"budgets.{name}", device_path) for name in names
               if device.budgets.limit(name) is not None and space.budgets.limit(name) is None]
    return wanted + [(f"objectives: {name}", space_path) for name in space.objectives
                     if name in names]


def check_power_is_measured(space: "SearchSpace", space_path: Path, device: "DeviceProfile",
                            device_path: Path) -> None:
    """A power budget or objective needs a sensor on the device, and a generation figure
    (tokens/s, time to first token) the agent's generation runtime: refused before any trial."""
    from hwnas_agent.protocol import GENAI

    generation = [metric.name for metric in metrics.all_metrics() if metric.needs_generation]
    wanted = _wanted(space, space_path, device, device_path, generation)
    if wanted and device.runtime.name != GENAI:
        key, path = wanted[0]
        raise ConfigError(
            f"{path}: key '{key}' is a generation figure, which only the agent's {GENAI} "
            f"runtime measures (a language model's folder, prompt then greedy tokens); device "
            f"{device.name} ({device_path}) measures with runtime {device.runtime.name}. Use a "
            f"profile with runtime.name: {GENAI}, or a per-inference figure (latency_p90_ms)")
    if device.power.source != "none":
        return
    power = [metric.name for metric in metrics.all_metrics() if metric.needs_power]
    wanted = _wanted(space, space_path, device, device_path, power)
    if wanted:
        key, path = wanted[0]
        raise ConfigError(
            f"{path}: key '{key}' needs a measured watt figure, but device {device.name} "
            f"({device_path}) has power.source: none. Set power.source in {device_path} to the "
            f"device's sensor (`hwnas-agent facts` on the device lists them), or remove '{key}': "
            f"hwnas never guesses a power figure")


def measured(measurement: Measurement, artifact: Artifact, basis: str = "total",
             wanted: tuple[str, ...] = ()) -> dict[str, float]:
    """Every figure a budget or objective can name (the registry's metrics whose value a
    measurement or the bytes give), from one measurement of one artifact."""
    figures = metrics.values(measurement, artifact, basis)
    missing = [name for name in wanted if name not in figures]
    if missing:
        power = measurement.power
        why = measurement.power_error or (
            "the device measured no power (power.source: none)" if power is None
            and any(metrics.get(name).needs_power for name in missing)
            else f"the measurement gave no {missing[0]}")
        raise MeasurementError(f"{measurement.device}: {', '.join(missing)} needed, but the "
                               f"measurement has none: {why}")
    return figures


def constraint_values(budgets: "Budgets", measurement: Measurement, artifact: Artifact,
                      fidelity: OutputFidelity | None = None) -> dict[str, float]:
    """Budget name -> relative excess (ceiling) or shortfall (floor), for the budgets that
    are set (the fidelity budget once ``fidelity`` is known). A budget on an evaluation's
    figure (a language model's perplexity) is not among them: no measurement gives it, and
    its evaluator decides it after evaluation (hwnas/llm/trials.py)."""
    limits = {name: limit for name, limit in budgets.limits().items()
              if name != "fidelity_cosine_min" and metrics.get(name).screenable}
    figures = measured(measurement, artifact, budgets.basis, tuple(limits))
    values = {name: metrics.get(name).constraint(figures[name], limit)
              for name, limit in limits.items()}
    if fidelity is not None and budgets.fidelity_cosine_min is not None:
        values["fidelity_cosine_min"] = ((1.0 - fidelity.cosine_mean)
                                         / (1.0 - budgets.fidelity_cosine_min) - 1.0)
    return values


# the default search with no latency in it, for a device whose latency is a simulator's
NPU_SPACE = "search_spaces/fashion_mnist_npu.yaml"


def latency_uses(objectives: "list[str] | tuple[str, ...]", budgets: "Budgets") -> list[str]:
    """Where a search would use a figure only the device gives (latency, peak memory; the
    registry's ``device_only``): what a simulator's figure must never feed."""
    uses = [o for o in objectives if metrics.get(o).device_only]
    return uses + [f"budgets.{name}" for name in budgets.limits()
                   if name != "fidelity_cosine_min" and metrics.get(name).device_only]


def breaks_a_budget(constraints: dict[str, float]) -> bool:
    return any(value > 0 for value in constraints.values())


def describe_excess(constraints: dict[str, float]) -> str:
    """'latency_p90_ms over budget by 12%, throughput under its floor by 3%' for the budgets
    broken."""
    return ", ".join(f"{name} {_missed(name)} by {_percent(value)}"
                     for name, value in constraints.items() if value > 0)


def _missed(name: str) -> str:
    metric = metrics.find(name)
    return "under its floor" if metric is not None and metric.higher_is_better \
        else "over budget"


def budget_text(name: str, limit: float, floor: bool) -> str:
    """'latency_p90_ms <= 2', 'throughput_per_s >= 500', 'fidelity_cosine_min >= 0.999'."""
    return f"{name} {'>=' if floor else '<='} {limit:g}"


def _percent(excess: float) -> str:
    """12% as such; an excess under 1% with as many digits as it takes not to read 0%."""
    if excess >= 0.01:
        return f"{excess:.0%}"
    return f"{excess * 100:.2g}%"


def objective_values(space: "SearchSpace", accuracy: float, measurement: Measurement,
                     artifact: Artifact, basis: str = "total") -> tuple[float, ...]:
    """The study's objectives, in the order the search space names them."""
    wanted = tuple(n for n in space.objectives[1:] if metrics.get(n).source != "evaluation")
    figures = measured(measurement, artifact, basis, wanted)
    return (accuracy, *(figures.get(name, metrics.worst(name)) for name in space.objectives[1:]))
