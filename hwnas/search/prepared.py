"""What a search has made ready before its trials (Prepared), and what it returns."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import optuna

from hwnas.budgets import effective_budgets
from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.run import RunFolder

if TYPE_CHECKING:
    from hwnas.config.models import Budgets
    from hwnas.data import TaskData
    from hwnas.space import SpaceShape
    from hwnas.train import BaseModel


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    run: RunFolder
    study: optuna.Study
    trials_run: int


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a trial needs that does not change between trials."""

    space: SearchSpace
    device: DeviceProfile  # the first device: its budgets and channel multiple apply
    budgets: "Budgets"
    task: "TaskData"
    base: "BaseModel"
    shape: "SpaceShape"
    devices: tuple[DeviceProfile, ...] = ()
    torch_device: str = "cpu"  # where PyTorch fine-tunes and ranks saliency (torch_device.py)

    def device_budgets(self) -> dict[str, "Budgets"]:
        """A figure is judged by the budgets of the device that measured it."""
        return {d.name: effective_budgets(self.space, d) for d in self.devices or (self.device,)}
