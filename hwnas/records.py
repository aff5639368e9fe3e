"""The central chain: Candidate -> Artifact -> Measurement -> TrialOutcome, each frozen and
JSON-able, and the StudyRecord that holds what a whole study shares (Measurement,
PowerReading and OutputFidelity live in hwnas/measurement.py).

Everything else in hwnas is a function between these records. TrialOutcome alone writes a
trial's attributes to the Optuna study and reads them back, with its policy part
(hwnas/policy_record.py: what the trial pipeline decided and measured on the way);
StudyRecord does the same for the study's. No other module knows their keys.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # optuna is only needed to write; reading takes any FrozenTrial-like object
    import optuna
    from optuna.trial import FrozenTrial

from hwnas import metrics
from hwnas.errors import ExportError
from hwnas.knobs.candidate import Candidate  # noqa: F401 - the chain starts with it (hwnas/knobs)
from hwnas.measurement import Measurement, OutputFidelity


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path = "") -> "Artifact":
        """As stored with a trial; ``path`` is where the bytes are now (the run folder knows)."""
        return cls(str(path), data["sha256"], int(data["size_bytes"]), _pairs(data["channels"]),
                   int(data["parameters"]))


class TrialStage(str, enum.Enum):
    """Where a trial ended: the one closed set every report, card and progress bar reads."""

    EVALUATED = "evaluated"  # fine-tuned, accuracy of the deployed bytes, measured again
    REJECTED = "rejected_before_finetune"  # broke a budget (or could not run) at screening
    # the search engine (sampler: engine) only: a per-device predictor put it far over a
    # budget, so it was never measured (its predicted figures are in the trial, never as a
    # measurement); or its accuracy at a low fidelity stopped it (Optuna state PRUNED)
    SKIPPED = "skipped_predicted_over_budget"
    STOPPED = "stopped_at_fidelity"
    FAILED = "failed"  # an error: see TrialOutcome.failure
    RUNNING = "running"  # not finished (or left by a controller that died: retried on resume)
    WAITING = "waiting"  # enqueued, not started

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class FineTuneReport:
    steps: int
    seconds: float
    final_loss: float | None = None
    planned_steps: int | None = None  # max_steps; fewer steps: max_seconds stopped it
    device: str | None = None  # the torch device it ran on (torch_device.py); None: before

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FineTuneReport":
        planned = data.get("planned_steps")
        return cls(int(data["steps"]), float(data["seconds"]), data.get("final_loss"),
                   None if planned is None else int(planned), data.get("device"))

    def cut_short(self) -> str:
        """'' or what a reader must know: the wall-clock bound stopped it before its steps, so
        it is not the fine-tune the same compression gets elsewhere."""
        if self.planned_steps is None or self.steps >= self.planned_steps:
            return ""
        return (f"fine-tune stopped by max_seconds at {self.steps} of {self.planned_steps} "
                f"steps ({self.seconds:.0f} s)")


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """Everything one trial found, in the order it was found; partial while it runs."""

    stage: TrialStage
    candidate: Candidate | None = None
    artifact: Artifact | None = None
    screen_measurement: Measurement | None = None  # the candidate before fine-tuning
    measurement: Measurement | None = None  # the deployed bytes (or the screen, if rejected)
    accuracy_val: float | None = None  # exported bytes, validation split: what the search uses
    accuracy_test: float | None = None  # held-out test split: what is reported
    # the deployed bytes' outputs against the same model's fp32 export (held-out data)
    output_fidelity: OutputFidelity | None = None
    finetune: FineTuneReport | None = None
    timings_s: tuple[tuple[str, float], ...] = ()
    device: str | None = None
    device_pool: str | None = None  # devices of one pool are interchangeable
    devices_lost: tuple[str, ...] = ()
    rejection: str | None = None  # why screening stopped it
    failure: str | None = None  # error class and message of a failed trial
    config_version: str | None = None  # the search space's content hash (run folder configs/)
    origin: int | None = None  # the trial whose candidate this one is (itself, or the one
    # a dead controller left behind and this retries): fine-tuning is seeded by it
    controller: str | None = None  # host:pid:start of the process that runs it
    pending_job: tuple[str, str, str] | None = None  # (device, job id, model sha256) being measured
    copied_from: str | None = None  # "study#trial": history kept by a fork of another study
    # several controllers proposing one candidate at once: which one measures it ("measures"),
    # which ones wait for its result ("waits"); see hwnas.search.twins.finished_twin
    twin_role: str | None = None
    # `hwnas finalize`: the search trial whose candidate this one fine-tuned again to full
    # fidelity (a longer distillation), with its own bytes, accuracies and measurement
    finalized_from: int | None = None
    # read back from the study, never written through the attributes:
    number: int | None = None
    constraints: tuple[tuple[str, float], ...] = ()  # Optuna convention: <= 0 meets the budget
    values: tuple[float, ...] | None = None

    @property
    def feasible(self) -> bool:
        """Evaluated, and every budget met on the deployed bytes. A rejected candidate is never
        feasible: it was never fine-tuned, and its accuracy is unknown."""
        return self.stage == TrialStage.EVALUATED and self.values is not None and \
            all(v <= 0 for _, v in self.constraints)

    @property
    def deployable(self) -> bool:
        """Has bytes worth deploying: evaluated (a rejected candidate was never fine-tuned)."""
        return self.stage == TrialStage.EVALUATED and self.artifact is not None

    def summary(self) -> str:
        return self.candidate.summary() if self.candidate is not None else ""

    # -- the study side: the only place that knows the attribute keys ----------------------
    def write(self, trial: "optuna.Trial") -> None:
        """Store as user attributes of a running trial (safe to call again as it progresses)."""
        for key, value in self.attributes().items():
            trial.set_user_attr(key, value)

    def attributes(self) -> dict[str, Any]:
        """The user attributes that hold this outcome (for a trial made with create_trial)."""
        attributes: dict[str, Any] = {"stage": self.stage.value}
        records = {"candidate": self.candidate, "artifact": self.artifact,
                   "screen_measurement": self.screen_measurement, "measurement": self.measurement,
                   "finetune": self.finetune, "output_fidelity": self.output_fidelity}
        for key, record in records.items():
            if record is not None:
                attributes[key] = record.to_dict()
        plain = {"accuracy_val": self.accuracy_val, "accuracy_test": self.accuracy_test,
                 "device": self.device, "device_pool": self.device_pool,
                 "rejection": self.rejection, "failure": self.failure,
                 "config_version": self.config_version, "origin": self.origin,
                 "controller": self.controller, "copied_from": self.copied_from,
                 "twin_role": self.twin_role, "finalized_from": self.finalized_from}
        attributes.update({key: value for key, value in plain.items() if value is not None})
        if self.timings_s:
            attributes["timings_s"] = dict(self.timings_s)
        if self.devices_lost:
            attributes["devices_lost"] = list(self.devices_lost)
        # written even when empty: a finished measurement must clear the one it replaces
        attributes["pending_job"] = list(self.pending_job) if self.pending_job else None
        return attributes

    @staticmethod
    def pool_and_finalized(attrs: Mapping[str, Any]) -> tuple[str | None, int | None]:
        """The device pool and the trial a `hwnas finalize` trial fine-tuned again, read
        without the rest (any evaluator's trial, a replay's too)."""
        return attrs.get("device_pool"), attrs.get("finalized_from")

    @classmethod
    def from_trial(cls, trial: "FrozenTrial") -> "TrialOutcome":
        state = trial.state.name
        outcome = cls.from_attributes(trial.user_attrs, state)
        if state == "FAIL" and outcome.failure is None:
            # hwnas records the reason of every failure it sees: none means its controller
            # stopped before it could tell the study (killed, or heartbeats lost)
            outcome = dataclasses.replace(outcome, failure=(
                "its controller stopped (killed, or its heartbeat was lost) before it finished; "
                "the candidate is retried as a new trial"))
        return dataclasses.replace(outcome, number=trial.number,
                                   constraints=_pairs(trial.constraints or {}),
                                   values=tuple(trial.values) if trial.values is not None else None)

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any], state: str = "COMPLETE") -> "TrialOutcome":
        """From a trial's user attributes (``state``: the Optuna state name)."""
        if state == "COMPLETE":
            stage = TrialStage(attrs.get("stage", TrialStage.EVALUATED.value))
        elif state in ("RUNNING", "WAITING"):
            stage = TrialStage[state]
        elif state == "PRUNED" and attrs.get("stage") in (TrialStage.SKIPPED.value,
                                                           TrialStage.STOPPED.value):
            stage = TrialStage(attrs["stage"])
        else:  # FAIL (or a PRUNED trial hwnas did not write): neither has a result
            stage = TrialStage.FAILED

        def record(key: str, kind: Any) -> Any:
            return kind.from_dict(attrs[key]) if attrs.get(key) is not None else None

        return cls(
            stage=stage, candidate=record("candidate", Candidate),
            artifact=record("artifact", Artifact),
            screen_measurement=record("screen_measurement", Measurement),
            measurement=record("measurement", Measurement),
            accuracy_val=attrs.get("accuracy_val"), accuracy_test=attrs.get("accuracy_test"),
            output_fidelity=record("output_fidelity", OutputFidelity),
            finetune=record("finetune", FineTuneReport),
            timings_s=_pairs(attrs.get("timings_s") or {}), device=attrs.get("device"),
            device_pool=attrs.get("device_pool"),
            devices_lost=tuple(attrs.get("devices_lost") or ()), rejection=attrs.get("rejection"),
            failure=attrs.get("failure"), config_version=attrs.get("config_version"),
            origin=attrs.get("origin"), controller=attrs.get("controller"),
            copied_from=attrs.get("copied_from"), twin_role=attrs.get("twin_role"),
            finalized_from=attrs.get("finalized_from"),
            pending_job=tuple(attrs["pending_job"]) if attrs.get("pending_job") else None)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """What every trial of a study shares: budgets, the base model, the data's preprocessing."""

    budgets: tuple[tuple[str, float], ...]  # budget name -> limit (only the budgets set)
    base_model_key: str  # content hash of the parent's weights
    base_model_test_accuracy: float
    input_shape: tuple[int, ...]  # one sample, without the batch
    preprocessing: Mapping[str, Any]  # what deployment must apply to inputs
    objectives: tuple[str, ...] = ("accuracy", "latency_p90_ms")
    energy_basis: str = "total"  # energy budgets and objectives: "total" or "above_idle"
    # fixed once per study, so that every controller and worker fine-tunes the same parent on
    # the same split (the weights are an artifact of the study, found by their sha256)
    parent_weights_sha256: str | None = None
    data_fingerprint: str | None = None
    search_space_yaml: str | None = None  # the search space every worker runs
    config_version: str | None = None
    n_trials: int | None = None  # completed trials the study asks for
    artifact_store: str | None = None  # where the parent, kept bytes and cards are
    # the unpruned fp32 parent measured once per study on the search's device: the reference
    # every trial's latency is read against
    base_model_measurement: Measurement | None = None
    base_model_size_bytes: int | None = None
    # budgets that are floors (on a higher-is-better metric), as the registry said when the
    # study was written: a report reads them right where a plug-in metric is not installed
    floors: tuple[str, ...] = ()
    # where the PyTorch work of the last `hwnas search` on the study ran (torch_device.describe;
    # workers do not write it); each trial's fine-tune report names its own
    torch_device: str | None = None

    def budget(self, name: str) -> float | None:
        return dict(self.budgets).get(name)

    def is_floor(self, name: str) -> bool:
        metric = metrics.find(name)
        return name in self.floors or name == "fidelity_cosine_min" or \
            (metric is not None and metric.higher_is_better)

    def write(self, study: "optuna.Study") -> None:
        study.set_user_attr("budgets", dict(self.budgets))
        study.set_user_attr("base_model", {"key": self.base_model_key,
                                           "test_accuracy": self.base_model_test_accuracy})
        study.set_user_attr("input_shape", list(self.input_shape))
        study.set_user_attr("preprocessing", dict(self.preprocessing))
        study.set_user_attr("energy_basis", self.energy_basis)
        study.set_user_attr("budget_floors", [name for name, _ in self.budgets
                                              if self.is_floor(name)])
        study.set_user_attr("parent", {"weights_sha256": self.parent_weights_sha256,
                                       "data_fingerprint": self.data_fingerprint})
        study.set_user_attr("search_space", {"yaml": self.search_space_yaml,
                                             "config_version": self.config_version,
                                             "n_trials": self.n_trials,
                                             "artifact_store": self.artifact_store})
        study.set_metric_names(list(self.objectives))
        if self.torch_device is not None:
            study.set_user_attr("torch_device", self.torch_device)
        if self.base_model_measurement is not None:  # written once; never erased by a re-run
            study.set_user_attr("base_model_measurement", {
                "key": self.base_model_key, "size_bytes": self.base_model_size_bytes,
                "measurement": self.base_model_measurement.to_dict()})

    @classmethod
    def from_study(cls, study: "optuna.Study") -> "StudyRecord":
        attrs = study.user_attrs
        base = attrs.get("base_model") or {}
        budgets = {k: v for k, v in (attrs.get("budgets") or {}).items() if v is not None}
        parent = attrs.get("parent") or {}
        space = attrs.get("search_space") or {}
        measured = attrs.get("base_model_measurement") or {}
        same_base = measured.get("key") == base.get("key")  # of this base model, not an older one
        return cls(_pairs(budgets), str(base.get("key", "")),
                   float(base.get("test_accuracy", float("nan"))),
                   tuple(attrs.get("input_shape") or ()), dict(attrs.get("preprocessing") or {}),
                   tuple(study.metric_names or ("accuracy", "latency_p90_ms")),
                   str(attrs.get("energy_basis") or "total"), parent.get("weights_sha256"),
                   parent.get("data_fingerprint"), space.get("yaml"), space.get("config_version"),
                   space.get("n_trials"), space.get("artifact_store"),
                   base_model_measurement=Measurement.from_dict(measured["measurement"])
                   if same_base and measured else None,
                   base_model_size_bytes=measured.get("size_bytes") if same_base else None,
                   floors=tuple(attrs.get("budget_floors") or ()),
                   torch_device=attrs.get("torch_device"))
