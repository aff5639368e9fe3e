"""The base model: a user's trained weights, or the built-in model trained once and cached.

The cache key is the content hash of everything that determines the weights (model, data,
training settings, this module's recipe version), so a second search reuses the model and
any change retrains it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.config.models import BaseModelSpec, TrainSettings
from hwnas.data import TaskData
from hwnas.entry_points import load_entry_point
from hwnas.errors import ConfigError
from hwnas.models import build_builtin

RECIPE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BaseModel:
    module: nn.Module
    key: str  # content hash, or the sha256 of the user's weights file
    test_accuracy: float
    train_seconds: float
    cached: bool


def cache_dir() -> Path:
    return Path(os.environ.get("HWNAS_CACHE_DIR", Path.home() / ".cache" / "hwnas"))


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start:start + batch_size]))
            correct += int((logits.argmax(1).numpy() == y[start:start + batch_size]).sum())
    return correct / len(x)


def train_classifier(model: nn.Module, task: TaskData, settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(task.train_x) / settings.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(settings.epochs):
        model.train()
        order = rng.permutation(len(task.train_x))
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(torch.from_numpy(task.train_x[batch])),
                           torch.from_numpy(task.train_y[batch]))
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def _cache_key(spec: BaseModelSpec, task: TaskData) -> str:
    recipe = {"builtin": spec.builtin, "train": spec.train.model_dump(), "task": task.name,
              "data": task.fingerprint, "recipe": RECIPE_VERSION, "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def load_parent(spec: BaseModelSpec, task: TaskData, weights: Path, test_accuracy: float,
                key: str) -> BaseModel:
    """The parent a study already fixed (its weights fetched from the artifact store): the
    architecture from the search space, these weights, no training."""
    model = (load_entry_point(spec.factory, "base_model.factory")() if spec.factory is not None
             else build_builtin(spec.builtin, task.input_shape[0], task.num_classes))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return BaseModel(model, key, test_accuracy, 0.0, True)


def load_base_model(spec: BaseModelSpec, task: TaskData, log=print) -> BaseModel:
    if spec.factory is not None:
        model = load_entry_point(spec.factory, "base_model.factory")()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"base_model.factory {spec.factory} returned {type(model).__name__}, "
                              f"not a torch.nn.Module")
        key = "untrained"
        if spec.weights is not None:
            try:
                data = Path(spec.weights).read_bytes()
                # weights_only: a state dict of tensors, never arbitrary pickled code
                state = torch.load(spec.weights, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except (OSError, RuntimeError) as exc:
                raise ConfigError(f"base_model.weights: cannot load {spec.weights}: {exc}") from None
            key = hashlib.sha256(data).hexdigest()
        model.eval()
        return BaseModel(model, key, torch_accuracy(model, task.test_x, task.test_y), 0.0, True)

    key = _cache_key(spec, task)
    path = cache_dir() / "base_models" / f"{spec.builtin}-{task.name}-{key[:16]}.pt"
    model = build_builtin(spec.builtin, task.input_shape[0], task.num_classes)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        meta = json.loads(meta_path.read_text())
        return BaseModel(model, key, meta["test_accuracy"], meta["train_seconds"], True)
    log(f"training the base model {spec.builtin} on {task.name} "
        f"({spec.train.epochs} epochs; cached afterwards in {path.parent})")
    started = time.perf_counter()
    train_classifier(model, task, spec.train)
    seconds = time.perf_counter() - started
    accuracy = torch_accuracy(model, task.test_x, task.test_y)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps({"test_accuracy": accuracy, "train_seconds": seconds,
                                     "key": key}, indent=1))
    log(f"base model: test accuracy {accuracy:.4f} after {seconds:.0f} s")
    return BaseModel(model, key, accuracy, seconds, False)
