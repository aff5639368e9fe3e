"""Width and pruning through torch-pruning on a real trained model."""

import pytest
import torch

from hwnas.compress.finetune import finetune
from hwnas.compress.prune import PruningSetup
from hwnas.compress.prune import prune as prune_setup
from hwnas.config.models import BaseModelSpec, DatasetSpec, FineTuneSettings, TrainSettings
from hwnas.data import load_task
from hwnas.models import model_stages, output_channels, output_layers
from hwnas.records import Candidate
from hwnas.train import load_base_model, torch_accuracy

SPEC = BaseModelSpec(builtin="small_cnn", train=TrainSettings(epochs=8, batch_size=64,
                                                               learning_rate=0.003))
FULL_PLAN = {"stage1": "fp32", "stage2": "fp32", "stage3": "fp32", "head": "fp32"}


@pytest.fixture(scope="module")
def trained():
    task = load_task(DatasetSpec(builtin="digits"))
    base = load_base_model(SPEC, task, log=lambda _: None)
    assert base.test_accuracy > 0.9
    return task, base


def prune_model(model, candidate, stages, example_input, ignored_layers, round_to,
                saliency_batches):
    """Width and global pruning by stage modules, through the search's own ``prune``."""
    setup = PruningSetup(base=model, example_input=example_input, units={"width": dict(stages)},
                         protected=list(ignored_layers), excluded={}, round_to=round_to)
    return prune_setup(setup, candidate, saliency_batches).module


def prune(trained, keep, criterion="l1", global_ratio=0.0, round_to=8):
    task, base = trained
    x, y = task.calibration_labels(128)
    candidate = Candidate.build(keep, criterion, global_ratio, FULL_PLAN)
    return prune_model(base.module, candidate, model_stages(base.module, SPEC),
                       torch.zeros(1, *task.input_shape), output_layers(base.module, 10), round_to,
                       [(x[:64], y[:64]), (x[64:], y[64:])])


def test_base_model_is_cached_by_content(trained):
    task, base = trained
    again = load_base_model(SPEC, task, log=lambda _: None)
    assert again.cached and again.key == base.key
    other = load_base_model(SPEC.model_copy(update={"train": TrainSettings(epochs=1)}), task,
                            log=lambda _: None)
    assert other.key != base.key and not other.cached


def test_width_keeps_per_stage_fraction_rounded_to_the_multiple(trained):
    model = prune(trained, {"stage1": 0.25, "stage2": 0.5, "stage3": 0.75})
    channels = output_channels(model)
    assert channels["stage1.0"] == 8 and channels["stage1.3"] == 8  # 32 * 0.25
    assert channels["stage2.0"] == 32 and channels["stage2.3"] == 32  # 64 * 0.5
    assert channels["stage3.0"] == 96  # 128 * 0.75
    assert channels["classifier"] == 10  # the output layer is never pruned
    assert all(c % 8 == 0 for name, c in channels.items() if name != "classifier")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_base_model_is_not_modified(trained):
    _, base = trained
    before = output_channels(base.module)
    prune(trained, {"stage1": 0.5, "stage2": 0.5, "stage3": 0.5}, global_ratio=0.2)
    assert output_channels(base.module) == before


def test_rounding_multiple_comes_from_the_device(trained):
    channels = output_channels(prune(trained, {"stage1": 0.6, "stage2": 1.0, "stage3": 1.0},
                                     round_to=16))
    assert channels["stage1.0"] % 16 == 0


def test_global_ratio_removes_more_channels(trained):
    keep = {"stage1": 1.0, "stage2": 1.0, "stage3": 1.0}
    plain = sum(p.numel() for p in prune(trained, keep).parameters())
    pruned = sum(p.numel() for p in prune(trained, keep, global_ratio=0.3).parameters())
    assert pruned < 0.8 * plain


def test_saliency_uses_the_data_and_chooses_other_channels_than_l1(trained):
    keep = {"stage1": 0.5, "stage2": 0.5, "stage3": 0.5}
    l1 = prune(trained, keep, "l1")
    saliency = prune(trained, keep, "saliency")
    assert output_channels(l1) == output_channels(saliency)
    assert not torch.equal(l1.stage2[0].weight, saliency.stage2[0].weight)


def test_finetune_recovers_accuracy_and_is_bounded(trained):
    task, base = trained
    model = prune(trained, {"stage1": 0.25, "stage2": 0.25, "stage3": 0.25}, global_ratio=0.2)
    before = torch_accuracy(model, task.val_x, task.val_y)
    settings = FineTuneSettings(max_steps=200, max_seconds=900, batch_size=64, learning_rate=3e-3)
    stats = finetune(model, base.module, task, settings)
    after = torch_accuracy(model, task.val_x, task.val_y)
    assert stats["steps"] == 200
    assert after > before + 0.5 and after > 0.8
    capped = finetune(model, base.module, task, FineTuneSettings(max_steps=10**6, max_seconds=0.5))
    assert capped["seconds"] < 5 and capped["steps"] < 10**6


def test_the_same_compression_is_fine_tuned_the_same_way_and_others_differently(trained):
    """The fine-tuning seed comes from the candidate, not from the trial that runs it: two
    trials (or a benchmark's uniform sweep and a search) that build the same compression get
    the same weights, so a side-by-side comparison is not decided by fine-tuning noise."""
    task, base = trained
    keep = {"stage1": 0.5, "stage2": 0.5, "stage3": 0.5}
    candidate = Candidate.build(keep, "l1", 0.0, FULL_PLAN)
    other = Candidate.build(keep, "l1", 0.0, {**FULL_PLAN, "head": "int8"})
    assert candidate.finetune_seed(3) == Candidate.build(dict(keep), "l1", 0.0, dict(FULL_PLAN)).finetune_seed(3)
    assert candidate.finetune_seed(3) == candidate.finetune_seed(0) + 3
    assert candidate.finetune_seed(0) != other.finetune_seed(0)
    settings = FineTuneSettings(max_steps=20, max_seconds=900, batch_size=64)
    tuned = []
    for seed in (candidate.finetune_seed(0), candidate.finetune_seed(0), other.finetune_seed(0)):
        model = prune(trained, keep)
        finetune(model, base.module, task, settings, seed=seed)
        tuned.append(model.stage2[0].weight.detach().clone())
    assert torch.equal(tuned[0], tuned[1])
    assert not torch.equal(tuned[0], tuned[2])


def test_a_fine_tune_cut_short_by_its_time_bound_says_so(trained):
    from hwnas.records import FineTuneReport

    task, base = trained
    keep = {"stage1": 0.5, "stage2": 0.5, "stage3": 0.5}
    whole = FineTuneReport.from_dict(finetune(prune(trained, keep), base.module, task,
                                              FineTuneSettings(max_steps=3, max_seconds=900,
                                                               batch_size=32)))
    assert (whole.steps, whole.planned_steps, whole.cut_short()) == (3, 3, "")
    cut = FineTuneReport.from_dict(finetune(prune(trained, keep), base.module, task,
                                            FineTuneSettings(max_steps=10 ** 6, max_seconds=0.5,
                                                             batch_size=32)))
    assert cut.steps < cut.planned_steps == 10 ** 6
    assert cut.cut_short().startswith(f"fine-tune stopped by max_seconds at {cut.steps} of "
                                      f"1000000 steps")
    assert FineTuneReport.from_dict(cut.to_dict()) == cut
    # a record written before planned_steps existed reads as not cut short
    assert FineTuneReport.from_dict({"steps": 5, "seconds": 1.0}).cut_short() == ""


GRID = [round(0.125 + i / 16, 10) for i in range(15)]  # the default space's keep_range


def test_a_smaller_keep_never_builds_a_larger_model(trained):
    """Every step of the fine width grid, every layer: stage1 has 32 channels, so keep 0.125
    rounds to 0 channels at multiple 16; torch-pruning would then leave the stage whole (larger
    than keep 0.5). The ratio is raised to one multiple instead."""
    for round_to in (8, 16):
        models = [prune(trained, {s: keep for s in ("stage1", "stage2", "stage3")},
                        round_to=round_to) for keep in GRID]
        layers = [output_channels(model) for model in models]
        for name in layers[0]:
            widths = [channels[name] for channels in layers]
            assert widths == sorted(widths), (round_to, name, widths)
        sizes = [sum(p.numel() for p in model.parameters()) for model in models]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], (round_to, sizes)
        assert layers[0]["stage1.0"] == round_to
    # keep 0.375 on the default multiple 8: 32 -> 12 -> 8, 64 -> 24, 128 -> 48
    channels = output_channels(prune(trained, {s: 0.375 for s in ("stage1", "stage2", "stage3")}))
    assert (channels["stage1.0"], channels["stage2.0"], channels["stage3.0"]) == (8, 24, 48)


class _Narrow(torch.nn.Module):
    """One stage with a 24-channel conv (a MobileNet width: 8/24 is not exact in binary) and a
    16-channel squeeze conv beside 96-channel convs."""

    def __init__(self):
        super().__init__()
        self.stage = torch.nn.Sequential(
            torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(24, 96, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(96, 16, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 96, 1), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(96, 10)

    def forward(self, x):
        return self.classifier(self.stage(x).mean((2, 3)))


def test_each_layer_keeps_one_multiple_and_narrow_layers_do_not_hold_up_wide_ones():
    torch.manual_seed(0)
    model = _Narrow().eval()
    widths = []
    for keep in GRID:
        pruned = prune_model(model, Candidate.build({"stage": keep}, "l1", 0.0, {}),
                             {"stage": [model.stage]}, torch.zeros(1, 3, 8, 8),
                             [model.classifier], 8, [])
        channels = output_channels(pruned)
        widths.append(tuple(channels[f"stage.{i}"] for i in (0, 2, 4, 6)))
    assert widths[0] == (8, 8, 8, 8)  # 24 * 0.125 = 3 -> one multiple, not the whole 24
    assert widths[GRID.index(0.25)] == (8, 24, 8, 24)  # the 16-channel conv does not pin 96
    for layer in range(4):
        assert [w[layer] for w in widths] == sorted(w[layer] for w in widths), widths
