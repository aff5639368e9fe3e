"""Budgets -> Optuna constraints, in one place.

Optuna's convention: a constraint value <= 0 is met. Each is the relative excess over its
budget (measured / budget - 1), so that budgets of different units weigh alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwnas.records import Artifact, Measurement

if TYPE_CHECKING:
    from hwnas.config.models import Budgets, DeviceProfile, SearchSpace

# a rejected candidate was never evaluated: this stands in for its accuracy so that the
# sampler sees it as bad; reports show it as "not evaluated", never as a real accuracy
NOT_EVALUATED = 0.0


def effective_budgets(space: "SearchSpace", device: "DeviceProfile") -> "Budgets":
    """The search space's budgets win; the device profile's defaults fill the gaps."""
    from hwnas.config.models import Budgets

    return Budgets(**{name: getattr(space.budgets, name) if getattr(space.budgets, name) is not None
                      else getattr(device.budgets, name) for name in Budgets.model_fields})


def constraint_values(budgets: "Budgets", measurement: Measurement,
                      artifact: Artifact) -> dict[str, float]:
    """Budget name -> relative excess, for the budgets that are set."""
    measured = {"latency_p90_ms": measurement.latency_ms_p90, "model_size_mb": artifact.size_mb}
    return {name: measured[name] / limit - 1.0
            for name, limit in budgets.model_dump().items() if limit is not None}


def breaks_a_budget(constraints: dict[str, float]) -> bool:
    return any(value > 0 for value in constraints.values())


def describe_excess(constraints: dict[str, float]) -> str:
    """'latency_p90_ms over budget by 12%, ...' for the budgets broken."""
    return ", ".join(f"{name} over budget by {value:.0%}"
                     for name, value in constraints.items() if value > 0)


def objective_values(space: "SearchSpace", accuracy: float, measurement: Measurement,
                     artifact: Artifact) -> tuple[float, ...]:
    """The study's objectives, in the order the search space names them."""
    metrics = {"accuracy": accuracy, "latency_p90_ms": measurement.latency_ms_p90,
               "latency_p50_ms": measurement.latency_ms_p50, "model_size_mb": artifact.size_mb}
    return tuple(metrics[name] for name in space.objectives)
