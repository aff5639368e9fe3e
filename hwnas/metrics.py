"""The metrics a search can optimise or bound: one registry entry per metric.

A ``Metric`` says its one name (the YAML's objective and budget key, the study's objective
and constraint name, the engine's figure, the report's), its unit, whether higher or lower
is better, where its value comes from, whether it is known before fine-tuning, and how
reports and plots label it. A budget on a lower-is-better metric is a ceiling; on a
higher-is-better one, a floor. Constraints follow Optuna's convention (<= 0: met) as a
relative distance, so that budgets of different units weigh alike:

    ceiling (lower is better):  value / limit - 1      (0.12: 12% over)
    floor (higher is better):   1 - value / limit      (0.12: 12% under; at most 1, where
                                                        limit / value - 1 would be infinite
                                                        for a value of 0)

A plug-in adds a metric with ``register`` before the search space is loaded (in Python, or
through an entry point of the group ``hwnas.metrics`` naming a Metric or a list of them).
The Measurement record keeps the agent's JSON as it is; ``field`` names the Measurement
attribute a metric reads (``latency_p90_ms`` reads ``Measurement.latency_ms_p90``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from hwnas.errors import ConfigError

if TYPE_CHECKING:
    from hwnas.measurement import Measurement

SOURCES = ("measurement", "artifact", "evaluation")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ENTRY_POINT_GROUP = "hwnas.metrics"

# (measurement, artifact: hwnas.records.Artifact, energy basis) -> value; the artifact is not
# typed here, as records.py reads this registry
Reader = Callable[["Measurement", Any, str], "float | None"]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # "ms", "MB", "W", "inferences/s"; "" for a fraction
    higher_is_better: bool
    # measurement: from the agent's figures of the bytes; artifact: from the bytes themselves;
    # evaluation: from evaluating the fine-tuned bytes (accuracy)
    source: str
    label: str  # a plot axis: "measured latency p90 (ms)"; "{basis}": the energy basis
    column: str  # a table header: "p90 ms"
    # (measurement, artifact, energy basis) -> the value, None where it has none; default:
    # the Measurement attribute ``field``
    read: Reader | None = dataclasses.field(default=None, compare=False)
    field: str | None = None
    budgetable: bool = True  # accuracy is an objective only
    needs_power: bool = False  # only a device with a power sensor has it
    # only a generation runtime gives it (the agent's genai runtime: tokens/s, TTFT)
    needs_generation: bool = False
    # a simulator's figure of it is not the device's (Qualcomm's HTP simulated on x86)
    device_only: bool = False
    # only that family's searches have it (an evaluation figure its evaluator gives:
    # SearchSpace.family, "causal_lm" for perplexity); None: every family
    family: str | None = None
    # always a report column where trials have it (others: where the study names them)
    shown: bool = False
    spec: str = ".3f"  # how a table cell formats it

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r}: lower-case letters, digits and '_', "
                             f"starting with a letter")
        if self.source not in SOURCES:
            raise ValueError(f"metric {self.name}: source {self.source!r} is not one of "
                             f"{', '.join(SOURCES)}")
        if self.source != "evaluation" and self.read is None and self.field is None:
            raise ValueError(f"metric {self.name}: give 'read' or 'field' (where its value comes "
                             f"from)")
        if self.source == "evaluation" and self.budgetable and self.family is None:
            # a family's evaluator gives its own (a language model's perplexity): decided
            # after evaluation, as the output-fidelity floor is
            raise ValueError(f"metric {self.name}: a figure from evaluation is known only after "
                             f"fine-tuning; budgets on one are not supported")

    @property
    def screenable(self) -> bool:
        """Known from the screened copy, before any fine-tuning (what screening may reject
        on): every figure of a measurement or of the bytes; not an evaluation's."""
        return self.source != "evaluation"

    @property
    def direction(self) -> str:
        """Optuna's study direction for it as an objective."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def bound(self) -> str:
        """What a budget on it is: a 'floor' (higher is better) or a 'ceiling'."""
        return "floor" if self.higher_is_better else "ceiling"

    def constraint(self, value: float, limit: float) -> float:
        """Optuna's constraint value: <= 0 when ``value`` meets the budget ``limit``."""
        return 1.0 - value / limit if self.higher_is_better else value / limit - 1.0

    def met(self, value: float, limit: float) -> bool:
        return value >= limit if self.higher_is_better else value <= limit

    def value(self, measurement: "Measurement", artifact: Any,
              basis: str = "total") -> float | None:
        """Its value for one measurement of one artifact (None: not there, or evaluated)."""
        if self.read is not None:
            found = self.read(measurement, artifact, basis)
        elif self.field is not None:
            found = getattr(measurement, self.field, None)
        else:
            return None
        return None if found is None else float(found)

    def axis(self, basis: str = "total") -> str:
        return self.label.format(basis=basis)

    def header(self, basis: str = "total") -> str:
        return self.column.format(basis=basis)


def _power(read: Callable[..., "float | None"]) -> Reader:
    return lambda measurement, _artifact, basis: (
        None if measurement.power is None else read(measurement.power, basis))


BUILT_IN = (
    Metric("accuracy", "", True, "evaluation", "validation accuracy (exported ONNX)", "val acc",
           budgetable=False, spec=".4f"),
    Metric("latency_p50_ms", "ms", False, "measurement", "measured latency p50 (ms)", "p50 ms",
           field="latency_ms_p50", device_only=True, shown=True),
    Metric("latency_p90_ms", "ms", False, "measurement", "measured latency p90 (ms)", "p90 ms",
           field="latency_ms_p90", device_only=True, shown=True),
    Metric("model_size_mb", "MB", False, "artifact", "model size (MB)", "MB",
           read=lambda _measurement, artifact, _basis: artifact.size_mb, shown=True),
    # the measuring process's peak resident memory (the agent's peak_rss_mb): the runtime,
    # the model and its buffers, as the deployment process would hold them
    Metric("peak_memory_mb", "MB", False, "measurement",
           "measured peak memory (MB, peak RSS of the runtime process)", "peak mem MB",
           field="peak_memory_mb", device_only=True, spec=".1f"),
    Metric("power_mean_w", "W", False, "measurement", "measured mean power (W)", "W mean",
           read=_power(lambda power, _basis: power.mean_w), needs_power=True, shown=True),
    Metric("power_peak_w", "W", False, "measurement", "measured peak power (W)", "W peak",
           read=_power(lambda power, _basis: power.peak_w), needs_power=True, shown=True),
    Metric("energy_mj_per_inference", "mJ", False, "measurement",
           "measured energy per inference (mJ, {basis})", "mJ/inf ({basis})",
           read=_power(lambda power, basis: power.energy(basis)), needs_power=True, shown=True,
           spec=".4f"),
    # generation, batch 1 (the agent's genai runtime: a prompt, then greedy tokens): a budget on
    # tokens/s is a floor
    Metric("decode_tokens_per_s", "tokens/s", True, "measurement",
           "measured decode tokens/s (batch 1)", "decode tok/s", field="decode_tokens_per_s",
           device_only=True, needs_generation=True, spec=".1f"),
    Metric("prefill_tokens_per_s", "tokens/s", True, "measurement",
           "measured prefill tokens/s (batch 1)", "prefill tok/s",
           field="prefill_tokens_per_s", device_only=True, needs_generation=True, spec=".1f"),
    Metric("ttft_ms_p50", "ms", False, "measurement", "measured time to first token p50 (ms)",
           "TTFT p50 ms", field="ttft_ms_p50", device_only=True, needs_generation=True,
           spec=".1f"),
    Metric("ttft_ms_p90", "ms", False, "measurement", "measured time to first token p90 (ms)",
           "TTFT p90 ms", field="ttft_ms_p90", device_only=True, needs_generation=True,
           spec=".1f"),
    # the decode windows' energy over the tokens they produced (the sensor's counter, or its
    # readings integrated): what a generated token costs the battery
    Metric("energy_mj_per_token", "mJ", False, "measurement",
           "measured energy per generated token (mJ)", "mJ/token", field="energy_mj_per_token",
           needs_power=True, needs_generation=True, spec=".2f"),
    # a language model's evaluation of its exported folder on the val text (hwnas/llm)
    Metric("perplexity", "", False, "evaluation", "validation perplexity (exported folder)",
           "val ppl", family="causal_lm", spec=".2f"),
    Metric("mcq_accuracy", "", True, "evaluation",
           "multiple-choice accuracy (exported folder, log-likelihood)", "MCQ acc",
           family="causal_lm", spec=".4f"),
)

_registry: dict[str, Metric] = {metric.name: metric for metric in BUILT_IN}
_lock = threading.Lock()
_plugins_loaded = False
_plugins_loading = False


def register(metric: Metric) -> Metric:
    """Add a metric (the same one again is a no-op; another under a taken name is refused)."""
    if metric.source == "evaluation":
        # an evaluated figure comes from its family's evaluator (Evaluator.evaluation_figures:
        # the built-in perplexity and mcq_accuracy from a language model's); a plug-in has none
        raise ValueError(f"metric {metric.name}: a metric of your own comes from the "
                         f"measurement or the bytes (source 'measurement' or 'artifact')")
    with _lock:
        known = _registry.get(metric.name)
        if known is not None and known is not metric:
            raise ValueError(f"a metric named {metric.name!r} is registered already")
        _registry[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    """Remove a plug-in's metric (built-in ones stay)."""
    if any(metric.name == name for metric in BUILT_IN):
        raise ValueError(f"{name} is a built-in metric")
    with _lock:
        _registry.pop(name, None)


def _load_plugins() -> None:
    """The metrics installed packages declare (entry point group ``hwnas.metrics``), once
    every one is registered: a plug-in that cannot be loaded is one ConfigError naming it,
    raised again at every later call until it is mended (not said once, then skipped)."""
    global _plugins_loaded, _plugins_loading
    if _plugins_loaded or _plugins_loading:
        return
    from hwnas.entry_points import installed_plugins

    _plugins_loading = True  # a plug-in's own import may read the registry: no second pass
    try:
        for where, found in installed_plugins(ENTRY_POINT_GROUP, "metric"):
            for metric in (found if isinstance(found, (list, tuple)) else [found]):
                if not isinstance(metric, Metric):
                    raise ConfigError(f"{where} is not an hwnas.metrics.Metric (or a list of "
                                      f"them)")
                try:
                    register(metric)
                except ValueError as exc:  # a name taken, or an evaluation metric
                    raise ConfigError(f"{where}: {exc}") from None
        _plugins_loaded = True
    finally:
        _plugins_loading = False


def all_metrics() -> tuple[Metric, ...]:
    _load_plugins()
    return tuple(_registry.values())


def names() -> list[str]:
    """Every metric an objective may name."""
    return [metric.name for metric in all_metrics()]


def budget_names() -> list[str]:
    """Every metric a budget may bound."""
    return [metric.name for metric in all_metrics() if metric.budgetable]


def get(name: str) -> Metric:
    """The registered metric; a ConfigError naming the allowed ones otherwise."""
    _load_plugins()
    metric = _registry.get(name)
    if metric is None:
        raise ConfigError(f"unknown metric {name!r}; registered metrics: {', '.join(names())}")
    return metric


def find(name: str) -> Metric | None:
    """The registered metric, or None (a stored study may name a plug-in not loaded here)."""
    _load_plugins()
    return _registry.get(name)


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna's study directions for objectives, in their order."""
    return [get(name).direction for name in objectives]


def measured_names(names: Iterable[str]) -> tuple[str, ...]:
    """Of these (budgets, then objectives), once each, the figures a measurement or the bytes
    give: an evaluation's (accuracy, perplexity) come from the evaluator."""
    return tuple(dict.fromkeys(n for n in names if get(n).source != "evaluation"))


def worst(name: str) -> float:
    """The value a sampler reads as the worst for an objective never measured or evaluated."""
    return -math.inf if get(name).higher_is_better else math.inf


def values(measurement: "Measurement", artifact: Any, basis: str = "total",
           wanted: Iterable[str] | None = None) -> dict[str, float]:
    """Every figure one measurement of one artifact has (or those of ``wanted``): name -> value."""
    chosen = all_metrics() if wanted is None else tuple(get(name) for name in wanted)
    found = {}
    for metric in chosen:
        value = metric.value(measurement, artifact, basis)
        if value is not None:
            found[metric.name] = value
    return found
