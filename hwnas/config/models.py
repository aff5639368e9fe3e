"""Validated, frozen records for search spaces and device profiles.

Every model forbids unknown keys: a typo in a YAML file is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from hwnas_agent.protocol import (POWER_SOURCES, MeasureRequest, ProtocolError, check_setting,
                                  section_fields, setting_key)
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator,
                      model_validator)

from hwnas import metrics
from hwnas.errors import excerpt

# what each means in the exported bytes: hwnas/export/precision.py
PRECISIONS = ("fp32", "fp16", "int8", "a16w8", "int8_weight_only")
Precision = Literal["fp32", "fp16", "int8", "a16w8", "int8_weight_only"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
# what numpy's and Optuna's seeded generators accept (np.random.seed, RandomState)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Frozen(BaseModel):
    # no number in a config is infinite or NaN: YAML reads .inf, .nan and 1e400 as such, and a
    # budget of inf would look set while it limits nothing (leave a budget out for no limit)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_entry_point(value: str) -> str:
    if not ENTRY_POINT.match(value):
        raise ValueError(f"{excerpt(value)} is not an entry point; write it as 'package.module:function'")
    return value


def _check_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{excerpt(value)}: use letters, digits, '.', '_' and '-' (it names files)")
    return value


EntryPoint = Annotated[str, AfterValidator(_check_entry_point)]
Name = Annotated[str, AfterValidator(_check_name)]


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

    @model_validator(mode="after")
    def _one_source(self) -> "BaseModelSpec":
        sources = [self.builtin, self.factory, self.torchvision]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one of 'builtin' (allowed: small_cnn), 'factory' "
                             "('package.module:function') or 'torchvision' (a model name)")
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


PixelSize = Annotated[int, Field(ge=1, le=8192)]


class PreprocessingSpec(Frozen):
    """torchvision transforms applied to every image, in this order: channels, resize,
    center crop, scale to [0, 1], normalise. The same steps must run in deployment; they are
    recorded in model cards."""

    channels: Literal[1, 3] | None = None  # 1: grayscale, 3: RGB (default: the data's own)
    resize: PixelSize | Annotated[list[PixelSize], Field(min_length=2, max_length=2)] | None = None
    center_crop: PixelSize | Annotated[list[PixelSize], Field(min_length=2, max_length=2)] | None = None
    mean: Annotated[list[float], Field(min_length=1, max_length=3)] | None = None
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=3)] | None = None

    @model_validator(mode="after")
    def _mean_std_fit(self) -> "PreprocessingSpec":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give 'mean' and 'std' together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("'mean' and 'std' need the same number of values (1, or one per channel)")
        if self.mean is not None and self.channels is not None and len(self.mean) not in (1, self.channels):
            raise ValueError(f"'mean' and 'std' need 1 or {self.channels} values for "
                             f"{self.channels} channels")
        return self


class ImageFolderSpec(Frozen):
    """Folders of class sub-folders (torchvision ImageFolder layout: DIR/<class>/<image>)."""

    train: Path
    val: Path | None = None  # default: dataset.validation_fraction of train
    test: Path | None = None  # default: dataset.test_fraction of train


class DatasetSpec(Frozen):
    builtin: Literal["fashion-mnist", "digits"] | None = None
    entry_point: EntryPoint | None = None
    image_folder: ImageFolderSpec | None = None
    # builtin and image_folder data: e.g. {resize: 64, channels: 3} for a torchvision model
    preprocessing: PreprocessingSpec | None = None
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1  # image folders without test
    path: Path | None = None  # folder of the idx files for fashion-mnist
    download: bool = False  # torchvision download, only where a network exists
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    calibration_samples: Annotated[int, Field(ge=8, le=10000)] = 256
    train_limit: Annotated[int, Field(ge=100)] | None = None
    # evaluate on the first N test samples only (a quicker, noisier test figure)
    test_limit: Annotated[int, Field(ge=100)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if sum(s is not None for s in (self.builtin, self.entry_point, self.image_folder)) != 1:
            raise ValueError("give exactly one of 'builtin' (allowed: fashion-mnist, digits), "
                             "'entry_point' ('package.module:function') or 'image_folder' "
                             "({train: DIR, val: DIR, test: DIR})")
        if self.preprocessing is not None and self.entry_point is not None:
            raise ValueError("'preprocessing' applies to builtin and image_folder data; an "
                             "entry point returns data already preprocessed")
        return self


class KeepRange(Frozen):
    """Every keep ratio from ``low`` to ``high`` in steps of ``step``: an ordered knob (an Optuna
    stepped float), so a sampler can move between ratios it has seen. Channel counts are still
    rounded to the device's channel multiple, so neighbouring ratios may build the same model."""

    low: Fraction
    high: Fraction = 1.0
    step: Annotated[float, Field(gt=0.0, le=1.0)] = 0.0625

    @model_validator(mode="after")
    def _whole_steps(self) -> "KeepRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        steps = (self.high - self.low) / self.step
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"high - low ({self.high - self.low:g}) must be a whole number of "
                             f"steps of {self.step:g}")
        return self

    def values(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 10) for i in range(count + 1)]


class WidthKnob(Frozen):
    """Per-stage fraction of channels kept: a list of choices (``keep_ratios``), or
    ``keep_range`` ({low, high, step}: fine, ordered steps)."""

    keep_ratios: list[Fraction] = [0.25, 0.5, 0.75, 1.0]
    keep_range: KeepRange | None = None
    stages: list[str] | None = None  # default: every convolutional stage of the model
    # module names (or shell patterns such as "*.f.b.0") whose output channels the width knob
    # leaves alone, with their submodules
    exclude: list[str] = []

    @model_validator(mode="after")
    def _one_form(self) -> "WidthKnob":
        if self.keep_range is not None and "keep_ratios" in self.model_fields_set:
            raise ValueError("give either 'keep_ratios' (a list of choices) or 'keep_range' "
                             "({low, high, step}), not both")
        return self

    def ratios(self) -> list[float]:
        """Every keep ratio the knob allows, smallest first."""
        return self.keep_range.values() if self.keep_range is not None \
            else sorted(self.keep_ratios)


class PruningKnob(Frozen):
    criteria: list[Literal["l1", "saliency"]] = ["l1", "saliency"]
    global_ratios: list[Annotated[float, Field(ge=0.0, le=0.9)]] = [0.0, 0.1, 0.2, 0.3]
    saliency_batches: Annotated[int, Field(ge=1, le=100)] = 4
    # module names or patterns whose output channels global pruning leaves alone
    exclude: list[str] = []


class HeadsKnob(Frozen):
    """Attention heads kept, as a fraction of each attention layer's heads (at least one is
    kept); one value per stage, or per attention layer. Applies to vision transformers."""

    keep_ratios: list[Fraction] = [0.5, 0.75, 1.0]
    granularity: Literal["stage", "layer"] = "stage"


class MlpKnob(Frozen):
    """Hidden units kept in each transformer block's MLP (rounded to the device's channel
    multiple); one value per stage, or per MLP. Applies to vision transformers."""

    keep_ratios: list[Fraction] = [0.5, 0.75, 1.0]
    granularity: Literal["stage", "layer"] = "stage"


class PrecisionKnob(Frozen):
    granularity: Literal["stage", "layer"] = "stage"
    choices: list[Precision] | None = None  # default: every precision the device supports
    # how int8/a16w8 activation ranges are calibrated; more than one makes it a searched knob
    calibration: Annotated[list[CalibrationMethod], Field(min_length=1)] = ["minmax"]


class Knobs(Frozen):
    width: WidthKnob | None = WidthKnob()
    pruning: PruningKnob | None = PruningKnob()
    precision: PrecisionKnob | None = PrecisionKnob()
    heads: HeadsKnob | None = HeadsKnob()  # only where the model has attention layers
    mlp: MlpKnob | None = MlpKnob()  # only where the model has transformer MLPs

    @model_validator(mode="after")
    def _some_knob(self) -> "Knobs":
        if all(knob is None for knob in (self.width, self.pruning, self.precision, self.heads,
                                          self.mlp)):
            raise ValueError("enable at least one knob: width, pruning, precision, heads or mlp")
        return self


class FineTuneSettings(Frozen):
    max_steps: Annotated[int, Field(ge=0)] = 300
    max_seconds: Annotated[float, Field(ge=0)] = 60.0
    batch_size: Annotated[int, Field(ge=1)] = 128
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    temperature: Annotated[float, Field(gt=0)] = 4.0
    distill_weight: Annotated[float, Field(ge=0, le=1)] = 0.7


Positive = Annotated[float, Field(gt=0)]


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


class SearchSettings(Frozen):
    n_trials: Annotated[int, Field(ge=1, le=100000)] = 20
    # engine: hwnas's own policy (hwnas/search/engine.py), one controller, one device profile;
    # tpe / nsga2 / random: an Optuna sampler with the budgets as constraints
    sampler: Literal["engine", "tpe", "nsga2", "random"] = "tpe"
    seed: Seed = 0
    storage: str | None = None  # any Optuna storage URL; default: SQLite in the run folder
    study_name: str | None = None
    run_dir: Path | None = None  # default: runs/<space>--<device>
    # where kept ONNX bytes, model cards and the parent's weights go: file:///shared/path or
    # s3://bucket/prefix; default: the run folder's artifacts/ (one machine)
    artifact_store: str | None = None
    # candidates to try first in a new study (e.g. a known-good configuration), as Optuna
    # parameters: keep_<stage>, pruning_criterion, global_pruning_ratio, precision_<unit>
    enqueue: list[dict[str, float | str]] = []


class SearchSpace(Frozen):
    name: Name
    base_model: BaseModelSpec
    dataset: DatasetSpec
    knobs: Knobs = Knobs()
    finetune: FineTuneSettings = FineTuneSettings()
    # metrics of the registry (hwnas/metrics.py), each optimised in its own direction
    objectives: list[str] = ["accuracy", "latency_p90_ms"]
    budgets: Budgets = Budgets()
    search: SearchSettings = SearchSettings()

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


# --- device profiles ------------------------------------------------------------------------


class LocalConnection(Frozen):
    """The agent runs on this machine, started by the controller on a free loopback port."""

    kind: Literal["local"]


class SSHConnection(Frozen):
    """The agent listens on the device's 127.0.0.1 and is reached through SSH (direct-tcpip).

    ``host`` may be a Host alias of ~/.ssh/config (HostName, Port, User, IdentityFile and
    ProxyJump are taken from it). Host keys are checked strictly against ``known_hosts``.
    Keys come from ``identity_file`` or the ssh-agent; passwords are not accepted.
    """

    kind: Literal["ssh"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    user: str | None = None
    identity_file: Path | None = None
    use_ssh_agent: bool = True
    jump_host: str | None = None  # [user@]host[:port] or a Host alias
    known_hosts: Path = Path("~/.ssh/known_hosts")
    ssh_config: Path | None = Path("~/.ssh/config")
    agent_port: Annotated[int, Field(ge=1, le=65535)] = 8765
    remote_dir: str = ".local/share/hwnas-agent"  # relative to the remote home
    connect_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    retries: Annotated[int, Field(ge=0, le=20)] = 4

    # these fields reach a remote shell, a unit file or a printed command: refuse what could
    # end a line or be read as an option there (they are also always quoted)
    @field_validator("host", "user", "jump_host", "remote_dir", "identity_file", "known_hosts",
                     "ssh_config")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
            raise ValueError("holds a control character (newline, tab, escape...)")
        return value

    @field_validator("host", "user", "jump_host")
    @classmethod
    def _not_an_option(cls, value: str | None) -> str | None:
        if value is not None and any(part.strip().startswith("-") for part in value.split(",")):
            raise ValueError("starts with '-', which a command would take for an option")
        return value

    @field_validator("remote_dir")
    @classmethod
    def _own_folder(cls, value: str) -> str:
        parts = [p for p in value.strip().split("/") if p not in ("", ".")]
        if not parts or parts == ["~"] or ".." in parts or value.startswith("-"):
            raise ValueError("name a folder of its own for the agent (uninstall removes it), "
                             "e.g. .local/share/hwnas-agent; no '..', not '/' or the home "
                             "itself, not starting with '-'")
        return value


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
        if (runtime.get("name") == "tensorrt" or "TensorrtExecutionProvider" in providers) and \
                isinstance(export, dict) and "int8_activations" not in export:
            data = {**data, "export": {**export, "int8_activations": "int8"}}
        return data

    @model_validator(mode="after")
    def _tensorrt_int8_is_symmetric(self) -> "DeviceProfile":
        tensorrt = self.runtime.name == "tensorrt" or \
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
