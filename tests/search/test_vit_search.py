"""A tiny torchvision VisionTransformer searched end to end: real training, real torch-pruning
of heads and MLP units, real export and the real local agent, through the CLI."""

import json

import pytest
from optuna.trial import TrialState

from hwnas.models import output_channels
from hwnas.models.saved import compare_with_onnx, load_pruned
from hwnas.records import TrialOutcome, TrialStage
from hwnas.run import RunFolder
from tests.conftest import FAST_DEVICE
from tests.search.test_search_e2e import hwnas

# digits upscaled to 28x28 (4x4 patches of 7 pixels): 16 tokens and a class token
VIT_SPACE = """\
name: vit-digits
base_model:
  torchvision: VisionTransformer
  kwargs: {patch_size: 7, num_layers: 2, num_heads: 4, hidden_dim: 64, mlp_dim: 128}
  train: {epochs: 15, batch_size: 64, learning_rate: 0.003}
dataset: {builtin: digits, preprocessing: {resize: 28}, validation_fraction: 0.15,
          calibration_samples: 64}
knobs:
  heads: {keep_ratios: [0.25, 0.5, 1.0]}
  mlp: {keep_ratios: [0.5, 1.0], granularity: layer}
  pruning: {criteria: [l1, saliency], global_ratios: [0.0, 0.25]}
  precision: null
finetune: {max_steps: 40, max_seconds: 60, batch_size: 64, learning_rate: 0.002}
budgets: {latency_p90_ms: 50.0}
search:
  n_trials: 3
  sampler: random
  enqueue:
    - {heads_encoder_layer_0: 0.5, heads_encoder_layer_1: 0.25,
       mlp_encoder.layers.encoder_layer_0.mlp: 0.5, mlp_encoder.layers.encoder_layer_1.mlp: 1.0,
       pruning_criterion: saliency, global_pruning_ratio: 0.25}
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    space, device = folder / "vit.yaml", folder / "device.yaml"
    space.write_text(VIT_SPACE)
    device.write_text(FAST_DEVICE)
    output = hwnas("search", space, "--device", device, "--run-dir", folder / "run",
                   "--no-progress")
    return folder / "run", output


def test_heads_and_mlp_units_are_searched(searched):
    run_dir, output = searched
    assert "pre-flight: the most aggressive candidate prunes" in output
    trials = RunFolder.load(run_dir).open_study().get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert set(trials[0].params) == {
        "heads_encoder_layer_0", "heads_encoder_layer_1", "mlp_encoder.layers.encoder_layer_0.mlp",
        "mlp_encoder.layers.encoder_layer_1.mlp", "pruning_criterion", "global_pruning_ratio"}
    for trial in trials:
        outcome = TrialOutcome.from_trial(trial)
        assert outcome.stage == TrialStage.EVALUATED
        assert outcome.measurement.latency_ms_p90 > 0
        assert 0.3 < outcome.accuracy_test <= 1.0  # chance is 0.1


def test_the_enqueued_candidate_has_the_pruned_shape(searched):
    run_dir, _ = searched
    first = TrialOutcome.from_trial(RunFolder.load(run_dir).open_study().get_trials()[0])
    channels = dict(first.artifact.channels)
    # 2 of 4 heads (16 wide) kept in block 0, 1 in block 1: q, k and v rows of the kept heads
    assert channels["encoder.layers.encoder_layer_0.self_attention.qkv"] == 3 * 2 * 16
    assert channels["encoder.layers.encoder_layer_1.self_attention.qkv"] == 3 * 1 * 16
    # MLP units: half kept in block 0 (then global pruning may take more), multiples of 8
    assert channels["encoder.layers.encoder_layer_0.mlp.0"] <= 64
    assert all(channels[f"encoder.layers.encoder_layer_{i}.mlp.0"] % 8 == 0 for i in (0, 1))
    # global pruning took embedding width too: every linear reading the residual stream shrank
    assert channels["encoder.layers.encoder_layer_0.self_attention.proj"] < 64
    assert channels["heads.head"] == 10


def test_export_writes_the_pytorch_model_that_rebuilds_to_the_onnx(searched, tmp_path):
    run_dir, output = searched
    assert "base model (unpruned, fp32): latency p90" in output
    first = TrialOutcome.from_trial(RunFolder.load(run_dir).open_study().get_trials()[0])
    printed = hwnas("export", run_dir, "--trial", 0, "--out", tmp_path)
    onnx, plan = next(tmp_path.glob("*.onnx")), next(tmp_path.glob("*.plan.json"))
    assert f"hwnas rebuild {plan}" in printed and next(tmp_path.glob("*.pt")).stat().st_size > 0
    card = json.loads(next(tmp_path.glob("*.card.json")).read_text())
    assert card["pytorch"]["channel_plan"] == plan.name
    base = card["base_model"]
    assert base["device"] == "test-local" and base["latency_p90_ms"] > 0
    assert base["trial_latency_p90_ratio"] == pytest.approx(
        first.measurement.latency_ms_p90 / base["latency_p90_ms"])
    # every registered metric the deployed bytes' measurement gives, by its one name
    assert card["metrics"]["latency_p90_ms"] == {"value": first.measurement.latency_ms_p90,
                                                 "unit": "ms", "better": "lower"}
    assert card["metrics"]["peak_memory_mb"]["value"] > 0
    assert 0 < base["trial_size_ratio"] < 1  # the trial is a pruned copy of it
    assert card["input"]["preprocessing"]["resize"] == [28]

    model = load_pruned(plan)
    assert output_channels(model) == dict(first.artifact.channels)
    difference, same_class = compare_with_onnx(model, onnx, (1, 28, 28))
    assert difference < 1e-4 and same_class == 1.0
    assert "same class on 100%" in hwnas("rebuild", plan, "--onnx", onnx)
