"""Healing brings a pruned decoder back towards its parent on text it did not train on."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hwnas.llm.heal import HealSettings, distill_loss, heal  # noqa: E402
from hwnas.llm.saliency import measure_saliency  # noqa: E402
from hwnas.llm.slicing import SlicePlan, slice_model  # noqa: E402
from hwnas.testing.llm import tiny_config  # noqa: E402


def held_out_kl(student, teacher, ids: torch.Tensor) -> float:
    settings = HealSettings(distill_weight=1.0)
    with torch.no_grad():
        return float(distill_loss(student(input_ids=ids, use_cache=False).logits,
                                  teacher(input_ids=ids, use_cache=False).logits, ids, settings))


def test_healing_lowers_the_held_out_distance_to_the_parent() -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    # a larger initialisation than the default: the parent's next-token distributions are peaked,
    # so there is something to lose by pruning and to learn back
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", initializer_range=0.2)).eval()
    generator = torch.Generator().manual_seed(3)
    train = torch.randint(1, 512, (32, 32), generator=generator)
    held_out = torch.randint(1, 512, (8, 32), generator=generator)
    saliency = measure_saliency(teacher, train[:8])
    student = slice_model(teacher, SlicePlan((48,) * 4, 1, 2, drop_layers=(2,)), saliency)
    before = held_out_kl(student, teacher, held_out)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    report = heal(student, teacher, train, HealSettings(steps=40, learning_rate=2e-3,
                                                        batch_size=8), device="cpu")
    after = held_out_kl(student, teacher, held_out)
    assert report.steps == 40 and report.tokens == 40 * 8 * 32 and report.device == "cpu"
    assert report.loss_last < report.loss_first
    assert after < 0.9 * before, (before, after)
    # the parent is the teacher, never trained; the student is left ready to export
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not student.training and not any(p.requires_grad for p in student.parameters())


def test_no_steps_means_no_change() -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = heal(model, model, torch.ones((2, 8), dtype=torch.long), HealSettings(steps=0))
    assert report.steps == 0 and report.loss_first is None
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
