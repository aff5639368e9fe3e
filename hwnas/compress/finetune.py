"""A short, bounded fine-tune of a pruned model, distilling from its unpruned parent."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.config.models import FineTuneSettings
from hwnas.data import TaskData
from hwnas.interrupts import check as check_interrupt
from hwnas.torch_device import batch_on, describe, frozen_copy, is_cpu


def finetune(student: nn.Module, teacher: nn.Module, task: TaskData, settings: FineTuneSettings,
             seed: int = 0, on_step: Callable[[float], None] | None = None,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Stops at ``max_steps`` or ``max_seconds``, whichever comes first. ``on_step(loss)``
    after each step (finalize's progress bar; a search trial has none). On an accelerator
    (``device``) the student moves there for the steps and is back on the CPU, in eval mode,
    when this returns; the teacher is read from its own frozen copy there."""
    where = describe(device)
    if settings.max_steps == 0 or settings.max_seconds == 0:
        return {"steps": 0, "seconds": 0.0, "planned_steps": settings.max_steps, "device": where}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if is_cpu(device):
        teacher.eval()
    else:
        teacher = frozen_copy(teacher, device)
        student.to(device)
    try:
        steps, seconds, loss_value = _steps(student, teacher, task, settings, rng, device,
                                            on_step)
    finally:
        if not is_cpu(device):
            student.to("cpu")
        student.eval()
    return {"steps": steps, "seconds": seconds, "final_loss": loss_value,
            "planned_steps": settings.max_steps, "device": where}


def _steps(student: nn.Module, teacher: nn.Module, task: TaskData, settings: FineTuneSettings,
           rng: np.random.Generator, device: torch.device | str,
           on_step: Callable[[float], None] | None) -> tuple[int, float, float]:
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.max_steps)
    temperature, alpha = settings.temperature, settings.distill_weight
    started = time.perf_counter()
    steps = 0
    loss_value = float("nan")
    while steps < settings.max_steps and time.perf_counter() - started < settings.max_seconds:
        check_interrupt()
        images, labels = task.train.batch(rng.integers(0, len(task.train), settings.batch_size))
        x, y = batch_on(images, device), batch_on(labels, device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = student(x)
        distill = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                           F.softmax(teacher_logits / temperature, dim=1),
                           reduction="batchmean") * temperature ** 2
        loss = (1 - alpha) * F.cross_entropy(logits, y) + alpha * distill
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        steps += 1
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(loss_value)
    return steps, time.perf_counter() - started, loss_value
