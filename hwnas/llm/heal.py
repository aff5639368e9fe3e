"""Healing: a bounded fine-tune of a pruned decoder on the domain text, taught by its parent.

The pruned model (student) learns the unpruned parent's (teacher's) next-token distribution
on the healing token budget: KL(teacher || student) at a temperature, over every position, plus
a share of the plain next-token loss on the text itself. Distillation needs no labels and
recovers more per step than the plain loss on small budgets (Minitron, Sheared-LLaMA); the
steps are the search's fidelity. The embedding and the LM head stay frozen: they are the
largest matrices, pruning does not touch them, and freezing them halves the optimiser's
memory. It runs on the controller's accelerator (--torch-device, hwnas/torch_device.py): the
student moves there and back, the teacher is read from a frozen copy there (never moved: other
trials' threads read it).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.nn.functional as F

from hwnas.interrupts import check as check_interrupt
from hwnas.torch_device import describe, frozen_copy, resolve


@dataclasses.dataclass(frozen=True)
class HealSettings:
    steps: int = 0  # 0: no healing
    max_seconds: float = 600.0  # a wall-clock bound as well, whichever comes first
    batch_size: int = 4  # blocks per step
    learning_rate: float = 5e-5
    temperature: float = 1.0
    distill_weight: float = 0.9  # the rest is the plain next-token loss
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class HealReport:
    steps: int
    seconds: float
    device: str
    loss_first: float | None
    loss_last: float | None
    tokens: int  # tokens seen (steps x batch x sequence length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 ids: torch.Tensor, settings: HealSettings) -> torch.Tensor:
    t = settings.temperature
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits[:, :-1].reshape(-1, vocab) / t, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1].reshape(-1, vocab) / t, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)
    plain = F.cross_entropy(student_logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    return settings.distill_weight * kl + (1.0 - settings.distill_weight) * plain


def heal(student: Any, teacher: Any, blocks: torch.Tensor, settings: HealSettings,
         device: str | None = None) -> HealReport:
    """Fine-tune ``student`` in place on ``blocks`` ([n, sequence length] token ids) for at
    most ``settings.steps`` steps; it is back on the CPU, in eval mode, when this returns."""
    target = resolve(device)  # None: auto
    if settings.steps <= 0 or len(blocks) == 0:
        return HealReport(0, 0.0, describe(target), None, None, 0)
    generator = torch.Generator().manual_seed(settings.seed)
    student.to(target).train()
    teacher = frozen_copy(teacher, target)
    teacher.eval()
    frozen = {id(p) for p in student.get_input_embeddings().parameters()}
    frozen |= {id(p) for p in student.get_output_embeddings().parameters()}
    trainable = [p for p in student.parameters() if id(p) not in frozen]
    for parameter in student.parameters():
        parameter.requires_grad_(id(parameter) not in frozen)
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    start = time.monotonic()
    first = last = None
    steps = tokens = 0
    try:
        while steps < settings.steps and time.monotonic() - start < settings.max_seconds:
            check_interrupt()
            pick = torch.randint(0, len(blocks), (settings.batch_size,), generator=generator)
            ids = blocks[pick].to(target)
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, use_cache=False).logits.float()
            student_logits = student(input_ids=ids, use_cache=False).logits.float()
            loss = distill_loss(student_logits, teacher_logits, ids, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            value = float(loss.detach())
            first = value if first is None else first
            last = value
            steps += 1
            tokens += ids.numel()
    finally:
        student.to("cpu").eval()
        for parameter in student.parameters():
            parameter.requires_grad_(False)
    return HealReport(steps, time.monotonic() - start, describe(target), first, last, tokens)
