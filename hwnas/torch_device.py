"""The controller's accelerator: where PyTorch trains the base model, fine-tunes, heals, ranks
saliency and evaluates (``--torch-device auto|cpu|cuda[:N]|mps``, default auto).

Only the arithmetic moves. A model and its batches go to the device for a step and the model
comes back to the CPU before anything leaves it (state_dicts, ONNX export, kept weights, the
base-model cache), so every file is the same format wherever it was made. On the CPU nothing
is moved at all: CPU results are bit-for-bit what they were before this option. Seeds are the
same (``torch.manual_seed`` seeds every device); a GPU's kernels are not bit-identical to the
CPU's, so a GPU run's figures are close to, not equal to, a CPU run's.
"""

from __future__ import annotations

import copy
import re
import threading
import weakref
from typing import Any

import torch
from torch import nn

from hwnas.errors import ConfigError

AUTO = "auto"
ALLOWED = "auto, cpu, cuda, cuda:N, mps"
_SPELLING = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available() -> list[str]:
    """What this machine offers, as ``--torch-device`` spells it."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve(requested: str | None = AUTO, option: str = "--torch-device") -> torch.device:
    """The device a spelling names on this machine; ``auto``: the first CUDA device, else
    Apple's MPS, else the CPU. A device this machine lacks is refused, naming what it has."""
    spelling = (requested or AUTO).strip().lower()
    if not _SPELLING.match(spelling):
        raise ConfigError(f"{option} {requested!r}: not a torch device; allowed: {ALLOWED} "
                          f"(this machine has: {', '.join(available())})")
    if spelling == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spelling == "cpu":
        return torch.device("cpu")
    if spelling == "mps":
        if not _mps_available():
            raise ConfigError(f"{option} mps: this machine has no Apple MPS device; use "
                              f"{option} auto or cpu (this machine has: "
                              f"{', '.join(available())})")
        return torch.device("mps")
    index = int(spelling.split(":")[1]) if ":" in spelling else 0
    if not torch.cuda.is_available():
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} finds no CUDA device or driver")
        raise ConfigError(f"{option} {spelling}: this machine has no CUDA device ({why}); use "
                          f"{option} auto or cpu (this machine has: {', '.join(available())})")
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{option} {spelling}: this machine has {count} CUDA device"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); this "
                          f"machine has: {', '.join(available())}")
    return torch.device("cuda", index)


def describe(device: torch.device | str) -> str:
    """``cpu``, ``mps`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a record keeps."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def is_cpu(device: torch.device | str | None) -> bool:
    return device is None or torch.device(device).type == "cpu"


def batch_on(array: Any, device: torch.device | str | None) -> torch.Tensor:
    """A numpy batch as a tensor on ``device`` (the CPU: the tensor shares the array)."""
    tensor = torch.from_numpy(array) if not isinstance(array, torch.Tensor) else array
    return tensor if is_cpu(device) else tensor.to(device, non_blocking=True)


class _Copies:
    """A frozen copy of a shared model (the parent a trial distils from) on each accelerator,
    made once: trials on several threads read it, none moves it; on the CPU, the model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: "weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]]" = \
            weakref.WeakKeyDictionary()

    def of(self, model: nn.Module, device: torch.device | str | None) -> nn.Module:
        if is_cpu(device):
            return model
        key = str(torch.device(device))
        with self._lock:
            per_device = self._copies.setdefault(model, {})
            if key not in per_device:
                twin = copy.deepcopy(model).to(key).eval()
                for parameter in twin.parameters():
                    parameter.requires_grad_(False)
                per_device[key] = twin
            return per_device[key]


frozen_copy = _Copies().of
