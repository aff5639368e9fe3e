"""--torch-device for a language model: saliency and healing run where it says, the same
figures whether the CPU was asked for or chosen by auto, and it is recorded in the study, the
healing report and the language model card."""

from __future__ import annotations

import pytest
import torch

from hwnas.records import TrialStage
from hwnas.run import outcomes
from tests.llm.test_search import _search, _write

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from hwnas.testing.llm import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("llm") / "hf", "llama")

HEALING = (
    "finetune: {max_steps: 3, max_seconds: 60, batch_size: 2, learning_rate: 0.001}\n"
    "search: {n_trials: 1, sampler: random, seed: 1,\n"
    "         enqueue: [{llm_mlp_layers_0_1: 0.5, llm_mlp_layers_2_3: 0.5,\n"
    "                    llm_drop_layers: 0, llm_bits_layers_0_1: int8/32,\n"
    "                    llm_bits_layers_2_3: int8/32, llm_bits_embedding: int4/32,\n"
    "                    llm_bits_lm_head: int4/32}]}\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is the CPU only without a GPU")
def test_cpu_and_auto_heal_alike_and_the_device_is_recorded(tiny_hf, tmp_path):
    from hwnas.llm.card import language_card

    found = {}
    for asked in ("cpu", "auto"):
        space, device = _write(tmp_path / asked, tiny_hf, HEALING)
        outcome = _search(space, device, tmp_path / asked / "run", torch_device=asked)
        (only,) = outcomes(outcome.study)
        assert only.stage == TrialStage.EVALUATED, only.failure
        trial = outcome.study.trials[0]
        heal = trial.user_attrs["llm"]["heal"]
        assert heal["device"] == "cpu" and heal["steps"] == 3
        assert outcome.study.user_attrs["torch_device"] == "cpu"
        card = language_card(outcome.study, trial, only, "0" * 64)
        assert card["torch_device"] == "cpu" and card["healing"]["device"] == "cpu"
        found[asked] = (heal["loss_first"], heal["loss_last"], only.accuracy_val,
                        only.artifact.sha256)
    assert found["cpu"] == found["auto"]


def test_saliency_and_healing_on_an_accelerator_path_with_the_cpu_standing_in(monkeypatch):
    """The moves, the parent's frozen copy and the moves back, with the CPU playing the
    accelerator: the same scores and the same healed weights as the plain CPU path, the
    models back on the CPU and the shared parent untouched."""
    from transformers import AutoModelForCausalLM

    from hwnas import torch_device
    from hwnas.llm import saliency as saliency_module
    from hwnas.llm.heal import HealSettings, heal
    from hwnas.llm.slicing import SlicePlan, slice_model
    from hwnas.testing.llm import tiny_config

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    blocks = torch.randint(1, 512, (8, 32), generator=torch.Generator().manual_seed(3))
    settings = HealSettings(steps=4, batch_size=2, learning_rate=1e-3)

    def run() -> tuple:
        scores = saliency_module.measure_saliency(teacher, blocks, device="cpu")
        student = slice_model(teacher, SlicePlan((48,) * 4, 1, 2), scores)
        report = heal(student, teacher, blocks, settings, device="cpu")
        return scores, student, report

    plain_scores, plain_student, plain_report = run()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    monkeypatch.setattr(saliency_module, "is_cpu", lambda device: False)
    monkeypatch.setattr(torch_device, "is_cpu", lambda device: False)
    scores, student, report = run()
    for ours, theirs in ((scores.mlp, plain_scores.mlp), (scores.heads, plain_scores.heads),
                         (scores.kv_groups, plain_scores.kv_groups)):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert scores.block_influence == plain_scores.block_influence
    assert (report.loss_first, report.loss_last) == (plain_report.loss_first,
                                                     plain_report.loss_last)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                 plain_student.state_dict().values()))
    assert all(p.device.type == "cpu" for p in student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
