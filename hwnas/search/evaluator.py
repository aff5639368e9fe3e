"""What the search engine needs from whatever it searches: three methods, one small base.

An evaluator turns an Optuna trial into a candidate (define-by-run, like `hwnas.space`),
measures a candidate's hardware figures cheaply, and evaluates its accuracy expensively at
a fidelity. Proxies (cheap accuracy hints computed from the real architecture) are
optional. The compression search is one evaluator; a replay of a benchmark table another.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import TYPE_CHECKING, Any, Hashable, Mapping

import optuna

if TYPE_CHECKING:
    from hwnas.records import Measurement


@dataclasses.dataclass(frozen=True)
class HardwareFigure:
    """One measured figure (e.g. ``latency_p90_ms``) with what the measurement knows of its noise."""

    name: str
    value: float
    # where the true figure lies with 95% confidence; (value, value) for an exact figure
    ci95: tuple[float, float]
    rounds: int  # independent measurement rounds behind ``value``
    cv: float | None = None  # coefficient of variation of single inferences, if known

    @classmethod
    def exact(cls, name: str, value: float) -> "HardwareFigure":
        return cls(name, float(value), (float(value), float(value)), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": list(self.ci95), "rounds": self.rounds, "cv": self.cv}


@dataclasses.dataclass(frozen=True)
class HardwareReport:
    """Every figure of one measurement of one candidate; ``detail`` is JSON provenance."""

    figures: tuple[HardwareFigure, ...]
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def figure(self, name: str) -> HardwareFigure:
        for figure in self.figures:
            if figure.name == name:
                return figure
        raise KeyError(f"no figure {name!r} measured; have {[f.name for f in self.figures]}")

    def to_dict(self) -> dict[str, Any]:
        return {"figures": {f.name: f.to_dict() for f in self.figures}, "detail": dict(self.detail)}


@dataclasses.dataclass(frozen=True)
class Budget:
    """A hardware figure must be at most ``limit`` (a ceiling) or, where higher is better
    (e.g. throughput), at least ``limit`` (a floor). Optuna constraint, <= 0 when met (as
    hwnas/metrics.py defines it): value / limit - 1 for a ceiling, 1 - value / limit for a
    floor."""

    figure: str
    limit: float
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        if not (self.limit > 0 and math.isfinite(self.limit)):
            raise ValueError(f"budget on {self.figure}: limit must be a positive number, "
                             f"got {self.limit}")

    def constraint(self, value: float) -> float:
        return 1.0 - value / self.limit if self.higher_is_better else value / self.limit - 1.0

    def met(self, value: float) -> bool:
        return value >= self.limit if self.higher_is_better else value <= self.limit

    def log_excess(self, value: float) -> float:
        """How far ``value`` is on the wrong side of the limit, in log units (< 0: met)."""
        excess = math.log(value / self.limit)
        return -excess if self.higher_is_better else excess

@dataclasses.dataclass(frozen=True)
class AcceleratorVerdict:
    """Whether the device's accelerator runs a candidate whole (screened before anything is
    measured or fine-tuned); ``figures``: what is known exactly of a refused one (its size)."""

    compatible: bool
    reason: str | None = None
    figures: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Evaluator(abc.ABC):
    """The contract between the search policy and what it searches.

    Candidates are frozen, hashable records; equal candidates are the same model (an
    evaluator maps equivalent encodings to one candidate, so the engine never pays twice).
    """

    #: the budgets the engine screens against, each on a figure ``measure`` returns
    budgets: tuple[Budget, ...] = ()
    #: fractions of a full accuracy evaluation the engine may ask for, cheapest first
    fidelities: tuple[float, ...] = (1.0,)

    @abc.abstractmethod
    def suggest(self, trial: optuna.trial.BaseTrial) -> Hashable:
        """The candidate for a trial's parameters (define-by-run; also called on FixedTrial)."""

    @abc.abstractmethod
    def measure(self, candidate: Hashable, rounds: int | None = None) -> HardwareReport:
        """Cheap: the candidate's hardware figures, from ``rounds`` rounds (None: default)."""

    @abc.abstractmethod
    def evaluate(self, candidate: Hashable, fidelity: float) -> float:
        """Expensive: accuracy after training/fine-tuning at ``fidelity`` (1.0 = full)."""

    def evaluation_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """Figures of the evaluation besides accuracy (a language model's perplexity), for
        the objectives that name them; none by default."""
        return {}

    def proxies(self, candidate: Hashable) -> Mapping[str, float]:
        """Cheap accuracy hints from the real architecture (no training); none by default."""
        return {}

    def static_figures(self, candidate: Hashable) -> Mapping[str, float]:
        """Figures known exactly without the device (e.g. the exported bytes' size): a
        candidate that breaks a budget on them is never shipped to be measured. None known by
        default."""
        return {}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution] | None:
        """Every parameter ``suggest`` asks for, if known before any trial (the engine can then
        propose the very first one); None: learnt from the first trial."""
        return None

    def budgets_for(self, pool: str | None) -> tuple[Budget, ...]:
        """The budgets of a device pool (a fleet's devices may have their own)."""
        return self.budgets

    def ladders(self) -> list[list[dict[str, Any]]]:
        """Families of candidates (trial parameters), each ordered from the most capable down,
        its hardware figures falling along it (e.g. the same keep ratio in every stage, one
        precision): the frontier policy starts at the first of each that fits. None by
        default."""
        return []

    def parameters(self, candidate: Hashable) -> dict[str, Any] | None:
        """The canonical trial parameters of a candidate, where several encodings give the
        same model (models and records then use these); None: use the trial's own."""
        return None

    def describe(self, candidate: Hashable) -> dict[str, Any]:
        """The candidate as JSON, for the trial record."""
        to_dict = getattr(candidate, "to_dict", None)
        return to_dict() if callable(to_dict) else {"repr": repr(candidate)}

    # --- the trial's own record: an evaluator that keeps one (the compression search's
    # TrialOutcome) writes it through these; the engine calls them around every trial.

    #: the bytes that are deployed change with evaluation (fine-tuned weights, calibration
    #: on them): after evaluating, the engine measures again, and those figures decide
    measure_after_evaluation: bool = False

    def decided(self, candidate: Hashable, report: HardwareReport) -> None:
        """Of the reports ``measure`` returned for ``candidate`` since the last decision,
        ``report`` decided the budgets (the median of separate measurements, not always the
        last): the record keeps that one."""

    def open_trial(self, trial: optuna.Trial) -> str | None:
        """A trial starts, before its candidate is proposed (e.g. a device is leased): returns
        the device pool it measures on (the engine proposes for that pool), None if none."""
        return None

    def start_trial(self, trial: optuna.Trial, candidate: Hashable) -> None:
        """The pipeline acts on ``candidate`` in ``trial`` (measure/evaluate calls follow)."""

    def twin(self, trial: optuna.Trial, candidate: Hashable, own_pool_only: bool
             ) -> "optuna.trial.FrozenTrial | None":
        """A finished trial of the same candidate that another controller ran (waiting for it
        if it still runs), whose record this trial copies; None by default."""
        return None

    def accelerator_screen(self, candidate: Hashable) -> AcceleratorVerdict | None:
        """Whether the device's accelerator runs the candidate whole; None: nothing to screen."""
        return None

    def end_trial(self, trial: optuna.Trial, candidate: Hashable, stage: str,
                  earlier: "optuna.trial.FrozenTrial | None" = None) -> None:
        """Before the engine tells the study: ``stage`` is how the trial ended (``earlier``:
        the trial a duplicate repeats)."""

    def interrupted(self, trial: optuna.Trial) -> None:
        """The controller is being stopped (Ctrl-C) during the trial, which then fails."""

    def close_trial(self, trial: optuna.Trial) -> None:
        """Whatever way the trial ended (also by an error or an interrupt): release what it
        held. Called before the study is told."""

    def trial_failed(self, trial: optuna.Trial, candidate: Hashable | None,
                     exc: Exception) -> bool:
        """The trial raised ``exc`` and is failed (``candidate`` None: before it had one);
        True: the search cannot go on (the study stops)."""
        return True


def figures_from_measurement(measurement: "Measurement", size_mb: float | None = None
                             ) -> HardwareReport:
    """The agent's measurement as engine figures, each with the interval screening needs.

    The agent gives a distribution-free 95% interval of the median only. A drift between
    rounds moves every percentile, so the median's interval is widened to the spread of the
    round medians, and the p90's interval is that interval moved by (p90 - p50): an
    approximation (stated), not an order-statistics interval of the p90 itself.
    """
    rounds = [float(r["p50_ms"]) for r in measurement.agent_report.get("rounds") or []]
    low, high = measurement.latency_ms_p50_ci95
    if rounds:
        low, high = min(low, *rounds), max(high, *rounds)
    n = max(1, len(rounds))
    shift = measurement.latency_ms_p90 - measurement.latency_ms_p50
    figures = [
        HardwareFigure("latency_p50_ms", measurement.latency_ms_p50, (low, high), n,
                       measurement.latency_cv),
        HardwareFigure("latency_p90_ms", measurement.latency_ms_p90, (low + shift, high + shift),
                       n, measurement.latency_cv),
    ]
    if size_mb is not None:  # the exported bytes: exact
        figures.append(HardwareFigure.exact("model_size_mb", size_mb))
    if measurement.energy_mj_per_inference is not None:
        # no interval from the agent yet: treated as exact, so never re-measured for noise
        figures.append(HardwareFigure.exact("energy_mj_per_inference",
                                            measurement.energy_mj_per_inference))
    decode, interval = measurement.decode_tokens_per_s, measurement.decode_tokens_per_s_ci95
    if decode is not None and interval and interval[0] < interval[1]:
        # generation (the genai runtime): the median decode speed of its rounds, with the
        # interval the agent gives for it
        figures.append(HardwareFigure("decode_tokens_per_s", decode,
                                      (float(interval[0]), float(interval[1])),
                                      measurement.generation_rounds or 1, measurement.decode_cv))
    return HardwareReport(tuple(figures), measurement.to_dict())
