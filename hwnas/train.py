"""The base model: a user's trained weights, or a model trained here once and cached.

``builtin`` models are always trained here; ``factory`` and ``torchvision`` models take a
local state_dict (``weights:``) or are trained here when ``train:`` is written. A model with
neither is refused: searching compressions of random weights measures nothing useful.

The cache key is the content hash of everything that determines the weights (architecture and
its initial weights, data, training settings, this module's recipe version), so a second
search reuses the model and any change retrains it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from hwnas.config.models import BaseModelSpec, TrainSettings
from hwnas.disk import cache_folder
from hwnas.data import Split, TaskData
from hwnas.errors import ConfigError
from hwnas.models.build import build_model
from hwnas.models.stages import default_stages
from hwnas.models.transformers import split_attention
from hwnas.torch_device import batch_on, is_cpu

RECIPE_VERSION = 2
# keys under which training scripts commonly nest the state_dict in a checkpoint
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclasses.dataclass(frozen=True)
class BaseModel:
    module: nn.Module
    key: str  # content hash, or the sha256 of the user's weights file
    test_accuracy: float
    train_seconds: float
    cached: bool
    # stage name -> module names (the search space's map, the model's stages(), or defaults)
    stages: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def cache_dir() -> Path:
    return cache_folder()  # one definition (disk.py: the full-disk messages name it too)


def torch_accuracy(model: nn.Module, x: np.ndarray | Split, y: np.ndarray | None = None,
                   batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Accuracy on a split (or on arrays x, y); on ``device``, the model back on the CPU after."""
    from hwnas.data import ArraySplit

    split = x if isinstance(x, Split) else ArraySplit(x, y)
    model.eval()
    correct = 0
    if not is_cpu(device):
        model.to(device)
    try:
        with torch.no_grad():
            for images, labels in split.batches(batch_size):
                predicted = model(batch_on(images, device)).argmax(1).cpu().numpy()
                correct += int((predicted == labels).sum())
    finally:
        if not is_cpu(device):
            model.to("cpu")
    return correct / max(1, len(split))


def train_classifier(model: nn.Module, task: TaskData, settings: TrainSettings,
                     progress: bool = False, device: torch.device | str = "cpu") -> None:
    """Train in place on ``device`` (the model is back on the CPU when this returns);
    ``progress``: a bar of the steps, with the epoch and its mean loss."""
    if is_cpu(device):
        _train(model, task, settings, device, progress)
        return
    model.to(device)
    try:
        _train(model, task, settings, device, progress)
    finally:
        model.to("cpu")


def _train(model: nn.Module, task: TaskData, settings: TrainSettings,
           device: torch.device | str, progress: bool) -> None:
    from hwnas.progress import progress_bar

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(task.train) / settings.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress_bar(settings.epochs * steps_per_epoch, "step", "base model", progress)
    try:
        for epoch in range(settings.epochs):
            model.train()
            total, steps = 0.0, 0
            for images, labels in task.train.batches(settings.batch_size,
                                                     rng.permutation(len(task.train))):
                optimizer.zero_grad()
                loss = loss_fn(model(batch_on(images, device)), batch_on(labels, device))
                loss.backward()
                optimizer.step()
                schedule.step()
                total, steps = total + float(loss.detach()), steps + 1
                bar.set_postfix_str(f"epoch {epoch + 1}/{settings.epochs}, loss "
                                    f"{total / steps:.4f}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
    model.eval()


def _state_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(spec: BaseModelSpec, model: nn.Module, task: TaskData,
               device: torch.device | str = "cpu") -> str:
    recipe = {"source": spec.builtin or spec.torchvision or spec.factory,
              "kwargs": spec.kwargs, "architecture": repr(model),
              "initial_weights": _state_digest(model), "train": spec.train.model_dump(),
              "task": task.name, "data": task.fingerprint, "recipe": RECIPE_VERSION,
              "torch": torch.__version__.split("+")[0]}
    if not is_cpu(device):  # an accelerator's weights are close to the CPU's, not the same
        recipe["trained_on"] = torch.device(device).type
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _state_dict_in(loaded: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state_dict in what torch.load returned: itself, or nested under a usual key."""
    def is_state(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())

    if is_state(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for key in CHECKPOINT_KEYS:
            if is_state(loaded.get(key)):
                return loaded[key]
        keys = ", ".join(map(str, list(loaded)[:8]))
        raise ConfigError(f"base_model.weights: {path} holds a dict without a state_dict "
                          f"(keys: {keys}); save one with torch.save(model.state_dict(), PATH)")
    raise ConfigError(f"base_model.weights: {path} holds a {type(loaded).__name__}, not a "
                      f"state_dict; save one with torch.save(model.state_dict(), PATH)")


def load_weights(model: nn.Module, path: Path, source: str) -> str:
    """Load a state_dict file into ``model``; returns the file's sha256. Only tensors are ever
    unpickled (weights_only): a file holding code or whole objects is refused."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"base_model.weights: cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            # torch suggests weights_only=False here: that would run whatever code the file holds
            raise ConfigError(
                f"base_model.weights: {path} holds Python objects besides tensors (it pickles "
                f"{found.group(1)}: e.g. a whole model or an optimizer); hwnas loads tensors only "
                f"and never runs code from a weights file. Save the weights alone: "
                f"torch.save(model.state_dict(), PATH)") from None
        raise ConfigError(f"base_model.weights: {path} is not a PyTorch weights file "
                          f"(unreadable pickle); save one with "
                          f"torch.save(model.state_dict(), PATH)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"base_model.weights: {path} is not a PyTorch weights file ({first}); "
                          f"save one with torch.save(model.state_dict(), PATH)") from None
    state = dict(_state_dict_in(loaded, path))
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise ConfigError(f"base_model.weights: {path} does not fit the model built by {source} "
                          f"({'; '.join(problems)}); were the weights saved from this model, "
                          f"with these base_model.kwargs and this data set's number of classes "
                          f"and input channels?")
    model.load_state_dict(state)
    return hashlib.sha256(data).hexdigest()


def _source(spec: BaseModelSpec) -> str:
    if spec.torchvision is not None:
        return f"base_model.torchvision {spec.torchvision}"
    return f"base_model.factory {spec.factory}" if spec.factory else f"builtin {spec.builtin}"


def resolve_stages(model: nn.Module, spec: BaseModelSpec, input_shape: tuple[int, ...]
                   ) -> dict[str, tuple[str, ...]]:
    """Stage name -> module names: the search space's map, the model's stages(), or defaults."""
    if spec.stages is not None:
        return {stage: tuple(prefixes) for stage, prefixes in spec.stages.items()}
    if callable(getattr(model, "stages", None)):
        names = {id(module): name for name, module in model.named_modules()}
        return {stage: (names[id(module)],) for stage, module in model.stages().items()}
    return {stage: tuple(prefixes) for stage, prefixes in default_stages(model, input_shape).items()}


def load_base_model(spec: BaseModelSpec, task: TaskData, log: Callable[[str], None] = print,
                    progress: bool = False, device: torch.device | str = "cpu") -> BaseModel:
    """The base model of ``spec``, on the CPU: the user's weights, the cached model, or
    trained now on ``device`` (with a progress bar where ``progress``)."""
    source = _source(spec)
    with torch.random.fork_rng():
        # the same initial weights every time: they are part of the training cache key
        torch.manual_seed(spec.train.seed)
        model = build_model(spec, task.input_shape, task.num_classes, log)
    if spec.weights is not None:
        key = load_weights(model, spec.weights, source)
        split_attention(model)  # after loading: the user's weights fit the model as built
        model.eval()
        return BaseModel(model, key, torch_accuracy(model, task.test, device=device), 0.0, True,
                         resolve_stages(model, spec, task.input_shape))
    if not spec.trains:
        raise ConfigError(f"{source}: no weights and no training: the search would compress "
                          f"random weights. Give base_model.weights (a state_dict file) or "
                          f"base_model.train (e.g. train: {{epochs: 5}}) to train it here first")
    split_attention(model)
    stages = resolve_stages(model, spec, task.input_shape)
    key = _cache_key(spec, model, task, device)
    label = spec.builtin or spec.torchvision or (spec.factory or "").replace(":", ".")
    path = cache_dir() / "base_models" / f"{label}-{task.name}-{key[:16]}.pt"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        meta = json.loads(meta_path.read_text())
        return BaseModel(model, key, meta["test_accuracy"], meta["train_seconds"], True, stages)
    log(f"training the base model {label} on {task.name} "
        f"({spec.train.epochs} epochs on {device}; cached afterwards in {path.parent})")
    started = time.perf_counter()
    train_classifier(model, task, spec.train, progress, device)
    seconds = time.perf_counter() - started
    accuracy = torch_accuracy(model, task.test, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps({"test_accuracy": accuracy, "train_seconds": seconds,
                                     "key": key}, indent=1))
    log(f"base model: test accuracy {accuracy:.4f} after {seconds:.0f} s")
    return BaseModel(model, key, accuracy, seconds, False, stages)


def load_parent(spec: BaseModelSpec, task: TaskData, weights: Path, test_accuracy: float,
                key: str) -> BaseModel:
    """The parent a study already fixed (its weights fetched from the artifact store): the
    architecture from the search space, attention split as when it was published (those
    weights are its state_dict), these weights, no training."""
    model = build_model(spec, task.input_shape, task.num_classes, lambda _: None)
    split_attention(model)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return BaseModel(model, key, test_accuracy, 0.0, True,
                     resolve_stages(model, spec, task.input_shape))
