"""Config errors name the file, the key and what is allowed; typos are never ignored."""

import textwrap

import pytest

from hwnas.budgets import effective_budgets
from hwnas.config import load_device_profile, load_search_space
from hwnas.errors import ConfigError
from hwnas.space import space_shape
from tests.conftest import REPO


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD_SPACE = """\
name: ok
base_model: {builtin: small_cnn}
dataset: {builtin: digits}
"""


def test_shipped_configs_load():
    space = load_search_space(REPO / "search_spaces" / "fashion_mnist.yaml")
    device = load_device_profile(REPO / "device_profiles" / "local.yaml")
    assert space.dataset.builtin == "fashion-mnist"
    assert device.connection.kind == "local" and "int8" in device.precisions
    budgets = effective_budgets(space, device)
    assert budgets.latency_p90_ms == space.budgets.latency_p90_ms


def test_the_fleet_space_is_the_default_search_under_its_own_name():
    # the README's many-machines example runs it: workers and pools run the engine too
    default = load_search_space(REPO / "search_spaces" / "fashion_mnist.yaml")
    fleet = load_search_space(REPO / "search_spaces" / "fashion_mnist_fleet.yaml")
    assert default.search.sampler == fleet.search.sampler == "engine"
    differs = {key for key in type(default).model_fields
               if getattr(default, key) != getattr(fleet, key)}
    assert differs == {"name"}


def test_the_npu_space_is_the_default_search_with_no_latency_in_it():
    # what a device whose latency is a simulator's (local-qnn-htp.yaml) runs: the refusal of
    # the default space names it, and it passes that check
    from hwnas.budgets import NPU_SPACE, latency_uses
    from hwnas.search.study import refuse_emulated_latency

    default = load_search_space(REPO / "search_spaces" / "fashion_mnist.yaml")
    npu = load_search_space(REPO / NPU_SPACE)
    differs = {key for key in type(default).model_fields
               if getattr(default, key) != getattr(npu, key)}
    assert differs == {"name", "objectives", "budgets"}
    assert npu.objectives == ["accuracy", "model_size_mb"]
    assert npu.budgets.limits() == {"model_size_mb": default.budgets.limits()["model_size_mb"],
                                    "fidelity_cosine_min": 0.98}
    htp_path = REPO / "device_profiles" / "local-qnn-htp.yaml"
    htp = load_device_profile(htp_path)
    assert latency_uses(npu.objectives, effective_budgets(npu, htp)) == []
    pytest.importorskip("onnxruntime_qnn", reason="the QNN simulator needs pip install onnxruntime-qnn")
    refuse_emulated_latency(npu, htp, htp_path)  # accepted
    with pytest.raises(ConfigError, match="fashion_mnist_npu.yaml") as refused:
        refuse_emulated_latency(default, htp, htp_path)
    assert "latency_p90_ms" in str(refused.value)


def test_records_are_frozen(tmp_path):
    space = load_search_space(write(tmp_path, GOOD_SPACE))
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        space.name = "other"


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, GOOD_SPACE + "knobs:\n  width: {keep_ratio: [0.5]}\n")
    with pytest.raises(ConfigError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert str(path) in message
    assert "knobs.width.keep_ratio" in message and "unknown key" in message
    assert "keep_ratios" in message and "stages" in message  # the allowed keys


def test_top_level_typo_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'budget': unknown key; allowed keys here: .*budgets"):
        load_search_space(write(tmp_path, GOOD_SPACE + "budget: {latency_p90_ms: 1}\n"))


def test_bad_choice_lists_allowed_values(tmp_path):
    text = GOOD_SPACE + "knobs:\n  pruning: {criteria: [l1, taylor]}\n"
    with pytest.raises(ConfigError) as caught:
        load_search_space(write(tmp_path, text))
    assert "knobs.pruning.criteria.1" in str(caught.value)
    assert "'l1' or 'saliency'" in str(caught.value)


def test_out_of_range_value(tmp_path):
    text = GOOD_SPACE + "knobs:\n  width: {keep_ratios: [0.5, 1.5]}\n"
    with pytest.raises(ConfigError, match=r"knobs.width.keep_ratios.1.*less than or equal to 1"):
        load_search_space(write(tmp_path, text))


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'dataset': required but missing"):
        load_search_space(write(tmp_path, "name: x\nbase_model: {builtin: small_cnn}\n"))


def test_exactly_one_model_source(tmp_path):
    text = "name: x\nbase_model: {builtin: small_cnn, factory: 'a.b:c'}\ndataset: {builtin: digits}\n"
    with pytest.raises(ConfigError, match="exactly one of 'builtin'"):
        load_search_space(write(tmp_path, text))


def test_bad_entry_point(tmp_path):
    text = "name: x\nbase_model: {factory: not-an-entry}\ndataset: {builtin: digits}\n"
    with pytest.raises(ConfigError, match="package.module:function"):
        load_search_space(write(tmp_path, text))


def test_yaml_syntax_error_gives_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line \d+, column \d+ is not valid YAML"):
        load_search_space(write(tmp_path, "name: x\nbase_model: {builtin: small_cnn\n"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_search_space(write(tmp_path, "- a\n- b\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_search_space("/nonexistent/space.yaml")


DEVICE = """\
name: dev
connection: {kind: local}
"""


def test_device_profile_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"connection.kind.*'local'"):
        load_device_profile(write(tmp_path, "name: d\nconnection: {kind: telnet}\n", "d.yaml"))
    with pytest.raises(ConfigError, match=r"precisions.*include fp32"):
        load_device_profile(write(tmp_path, DEVICE + "precisions: [int8]\n", "d.yaml"))
    with pytest.raises(ConfigError, match=r"precisions.0.*'fp32', 'fp16', 'int8', 'a16w8' or 'int8_weight_only'"):
        load_device_profile(write(tmp_path, DEVICE + "precisions: [fp64]\n", "d.yaml"))
    with pytest.raises(ConfigError, match=r"key 'password': unknown key"):
        load_device_profile(write(tmp_path, DEVICE + "password: hunter2\n", "d.yaml"))


def test_space_checked_against_model_and_device(tmp_path):
    device = load_device_profile(write(tmp_path, DEVICE + "precisions: [fp32]\n", "d.yaml"))
    space = load_search_space(write(tmp_path, GOOD_SPACE + "knobs: {precision: {choices: [int8]}}\n"))
    with pytest.raises(ConfigError, match=r"\['int8'\] not supported by device dev"):
        space_shape(space, device, {"width": ["stage1"], "precision": ["stage1"]})
    space = load_search_space(write(tmp_path, GOOD_SPACE + "knobs: {width: {stages: [stem]}}\n"))
    with pytest.raises(ConfigError, match=r"\['stem'\] are not stages of the model; allowed: stage1"):
        space_shape(space, device, {"width": ["stage1"], "precision": ["stage1"]})


# a non-default value for every setting of the agent protocol: a field added to MeasureRequest
# without a value here fails test_every_setting_travels_from_yaml_to_the_agent
NON_DEFAULT = {
    "runtime": "tensorrt", "execution_providers": ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    "provider_options": [{"trt_fp16_enable": "1"}], "disable_cpu_fallback": True,
    "tensorrt_flags": ["fp16", "int8"], "intra_op_threads": 2, "inter_op_threads": 3,
    "graph_optimization": "basic", "batch_size": 4, "warmup_iterations": 7, "warmup_seconds": 0.25,
    "min_iterations": 33, "min_seconds": 1.5, "rounds": 3, "unstable_cv": 0.2, "timeout_s": 99.0,
    "seed": 5, "cpu_affinity": [0], "cooldown_below_c": 55.0, "cooldown_timeout_s": 30.0,
    "thermal_rise_c": 7.5, "clock_drop": 0.2, "power_source": "command",
    "power_min_samples": 30, "idle_seconds": 1.0, "prompt_tokens": 16, "generate_tokens": 8,
    "layer_profile": True, "layer_profile_runs": 7,
}


def test_every_setting_travels_from_yaml_to_the_agent(tmp_path, models_dir):
    """Each MeasureRequest field, written in the device profile's YAML, reaches the agent's
    persisted request unchanged: nothing the agent accepts is dropped on the way. (The power
    source's options go to the agent's configuration file, not the request: see
    tests/agent/test_server.py.)"""
    import dataclasses
    import json

    import yaml
    from hwnas_agent.protocol import MeasureRequest, section_fields, setting_key

    from hwnas.records import Artifact
    from hwnas.remote.device import power_sources
    from hwnas.remote.local import LocalAgentProcess

    fields = {f.name for f in dataclasses.fields(MeasureRequest)} - {"model_sha256"}
    assert set(NON_DEFAULT) == fields
    defaults = MeasureRequest(model_sha256="0" * 64).to_dict()
    assert all(NON_DEFAULT[name] != defaults[name] for name in fields)
    sections = {section: {setting_key(f): NON_DEFAULT[f.name] for f in section_fields(section)}
                for section in ("runtime", "measurement", "power")}
    path = write(tmp_path, DEVICE + yaml.safe_dump(sections), "d.yaml")

    profile = load_device_profile(path)
    process = LocalAgentProcess(tmp_path / "agent", power_sources=power_sources(profile))
    process.start()
    try:
        client = process.client("yaml")
        artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
        client.ensure_model(artifact)
        job_id = client.submit(profile.measure_request(artifact.sha256))
        stored = json.loads((process.state_dir / "jobs" / job_id / "request.json").read_text())
    finally:
        process.stop()
    assert stored == dict(NON_DEFAULT, model_sha256=artifact.sha256)


@pytest.mark.parametrize("section, error", [
    ("measurement: {rounds: 0}", "key 'measurement.rounds': expected an integer 1..1000 (got 0)"),
    ("measurement: {graph_optimization: all}", "key 'measurement.graph_optimization': unknown key"),
    ("runtime: {graph_optimization: fast}", "key 'runtime.graph_optimization': expected one of "
                                            "disable, basic, extended, all (got 'fast')"),
    ("measurement: {cooldown_below_c: 200}", "key 'measurement.cooldown_below_c': expected null or "
                                             "a temperature"),
    ("runtime: {provider_options: [{}, {}]}", "runtime.provider_options: field 'provider_options' "
                                              "has 2 entries for 1 execution providers"),
    ("power: {source: thermocouple}", "key 'power.source': expected one of none, ina3221"),
])
def test_measurement_settings_are_checked_by_the_agent_protocol(tmp_path, section, error):
    with pytest.raises(ConfigError) as caught:
        load_device_profile(write(tmp_path, DEVICE + section + "\n", "d.yaml"))
    assert str(tmp_path / "d.yaml") in str(caught.value)
    assert error in str(caught.value)


def refused_search(tmp_path, extra: str):
    """`hwnas search` of GOOD_SPACE + ``extra`` on DEVICE: (its result, space, device); the
    refusal comes before any trial (no study)."""
    import subprocess
    import sys
    from pathlib import Path

    space = write(tmp_path, GOOD_SPACE + extra)
    device = write(tmp_path, DEVICE, "d.yaml")
    done = subprocess.run([str(Path(sys.executable).parent / "hwnas"), "search", str(space),
                           "--device", str(device), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "study.db").exists()  # refused before any trial
    return done, space, device


@pytest.mark.parametrize("extra, key", [
    ("budgets: {power_mean_w: 5}\n", "budgets.power_mean_w"),
    ("budgets: {energy_mj_per_inference: 2, energy_basis: above_idle}\n",
     "budgets.energy_mj_per_inference"),
    ("objectives: [accuracy, energy_mj_per_inference]\n", "objectives: energy_mj_per_inference"),
])
def test_a_power_budget_on_a_device_without_a_sensor_is_refused_before_any_trial(
        tmp_path, extra, key):
    done, space, device = refused_search(tmp_path, extra)
    assert f"{space}: key '{key}' needs a measured watt figure" in done.stderr
    assert f"{device}) has power.source: none" in done.stderr and "Set power.source" in done.stderr


@pytest.mark.parametrize("extra, key", [
    ("budgets: {decode_tokens_per_s: 20}\n", "budgets.decode_tokens_per_s"),
    ("objectives: [accuracy, ttft_ms_p90]\n", "objectives: ttft_ms_p90"),
])
def test_a_generation_budget_on_a_device_that_measures_inferences_is_refused(tmp_path, extra, key):
    """tokens/s and time to first token come from the agent's genai runtime only: a budget on
    one, measured with onnxruntime, would fail every trial; it is refused before the first."""
    done, space, _ = refused_search(tmp_path, extra)
    assert f"{space}: key '{key}' is a generation figure" in done.stderr
    assert "measures with runtime onnxruntime" in done.stderr and "runtime.name: genai" in done.stderr


def test_energy_basis_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"budgets.energy_basis.*'total' or 'above_idle'"):
        load_search_space(write(tmp_path, GOOD_SPACE + "budgets: {energy_basis: marginal}\n"))


def test_the_width_keep_range_is_an_ordered_fine_knob(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from hwnas.config.models import DeviceProfile
    from hwnas.space import distributions, fits, space_shape, suggest

    space = load_search_space(REPO / "search_spaces" / "fashion_mnist.yaml")
    assert space.knobs.width.ratios()[:3] == [0.125, 0.1875, 0.25]
    assert 0.375 in space.knobs.width.ratios() and space.knobs.width.ratios()[-1] == 1.0
    device = DeviceProfile(name="d", connection={"kind": "local"}, precisions=["fp32", "int8"])
    shape = space_shape(space, device, {"width": ["stage1", "stage2", "stage3"],
                                          "precision": ["stage1", "head"]})
    found = distributions(space, shape)
    assert isinstance(found["keep_stage1"], FloatDistribution) and found["keep_stage1"].step == 0.0625
    # uniform keep 0.375 is expressible, and a stored stepped value fits the space again
    params = {f"keep_stage{i}": 0.375 for i in (1, 2, 3)} | {
        "pruning_criterion": "l1", "global_pruning_ratio": 0.0, "precision_stage1": "int8",
        "precision_head": "int8", "calibration_method": "minmax"}
    candidate = suggest(optuna.trial.FixedTrial(params), space, shape)
    assert dict(candidate.keep_ratios) == {"stage1": 0.375, "stage2": 0.375, "stage3": 0.375}
    assert fits(found["keep_stage1"], 0.375) and not fits(found["keep_stage1"], 0.38)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        keeps = dict(suggest(trial, space, shape).keep_ratios).values()
        assert all(round((k - 0.125) / 0.0625, 6).is_integer() for k in keeps)


@pytest.mark.parametrize("width, message", [
    ("{keep_range: {low: 0.5, high: 0.25}}", "must not exceed"),
    ("{keep_range: {low: 0.1, high: 1.0, step: 0.25}}", "whole number of steps"),
    ("{keep_range: {low: 0.25}, keep_ratios: [0.5, 1.0]}", "not both"),
    ("{keep_range: {low: 0.0}}", r"keep_range.low.*greater than 0"),
    ("{keep_range: {low: 0.5, high: 1.25}}", r"keep_range.high.*less than or equal to 1"),
    ("{keep_range: {low: 0.5, step: 0}}", r"keep_range.step.*greater than 0"),
    ("{keep_range: {low: 0.5, stride: 0.1}}", r"keep_range.stride"),
])
def test_a_bad_keep_range_names_the_key(tmp_path, width, message):
    text = (REPO / "search_spaces" / "fashion_mnist.yaml").read_text()
    start = text.index("  width:")
    end = text.index("  pruning:")
    path = tmp_path / "space.yaml"
    path.write_text(text[:start] + f"  width: {width}\n" + text[end:])
    with pytest.raises(ConfigError, match=message) as raised:
        load_search_space(path)
    assert "knobs.width" in str(raised.value) and str(path) in str(raised.value)


def test_an_enqueued_value_off_the_space_is_refused_before_any_trial(tmp_path):
    from hwnas.config.models import DeviceProfile
    from hwnas.space import check_enqueued

    text = (REPO / "search_spaces" / "fashion_mnist.yaml").read_text()
    device = DeviceProfile(name="d", connection={"kind": "local"}, precisions=["fp32", "int8"])

    def enqueue(params):
        path = tmp_path / "space.yaml"
        path.write_text(text + f"  enqueue:\n    - {params}\n")
        space = load_search_space(path)
        check_enqueued(space, space_shape(space, device, {"width": ["stage1", "stage2", "stage3"],
                                                          "precision": ["stage1", "head"]}))

    enqueue("{keep_stage1: 0.375, keep_stage2: 0.8125, pruning_criterion: saliency}")
    # Optuna itself would only warn and sample another keep in its place
    with pytest.raises(ConfigError, match=r"search.enqueue.0.keep_stage2: 0.38 is not in the "
                                          r"space; allowed: 0.125 to 1 in steps of 0.0625"):
        enqueue("{keep_stage1: 0.375, keep_stage2: 0.38}")
    with pytest.raises(ConfigError, match=r"search.enqueue.0.pruning_criterion: 'l2' .*l1, "
                                          r"saliency"):
        enqueue("{pruning_criterion: l2}")
    with pytest.raises(ConfigError, match=r"search.enqueue.0: unknown parameter\(s\) \['keep_x'\]"):
        enqueue("{keep_x: 0.5}")


@pytest.mark.parametrize("text, key", [
    (GOOD_SPACE + "budgets: {latency_p90_ms: [" + ", ".join(map(str, range(20000))) + "]}\n",
     "budgets.latency_p90_ms"),
    (GOOD_SPACE.replace("name: ok", "name: '" + "x" * 100000 + "!'"), "name"),
    (GOOD_SPACE.replace("{builtin: small_cnn}", "{factory: '" + "m." * 50000 + "'}"),
     "base_model.factory"),
])
def test_an_error_quotes_a_short_excerpt_of_a_long_value(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"key '{key}'") as caught:
        load_search_space(write(tmp_path, text))
    assert len(str(caught.value)) < 400, str(caught.value)[:1000]


@pytest.mark.parametrize("seed", ["100000000000000000000000000000", "4294967296", "-1"])
def test_a_seed_the_samplers_cannot_take_is_refused(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"key 'search.seed': Input should be (greater|less) "
                                          rf"than or equal to (0|4294967295) \(got {seed}\)"):
        load_search_space(write(tmp_path, GOOD_SPACE + f"search: {{seed: {seed}}}\n"))
    with pytest.raises(ConfigError, match=r"key 'base_model.train.seed'"):
        load_search_space(write(tmp_path, GOOD_SPACE.replace(
            "{builtin: small_cnn}", f"{{builtin: small_cnn, train: {{seed: {seed}}}}}")))


def test_the_largest_seed_is_a_sampler_seed_on_every_resumption(tmp_path):
    import numpy as np

    from hwnas.search.opening import make_sampler, resumption_seed

    space = load_search_space(write(tmp_path, GOOD_SPACE + "search: {seed: 4294967295}\n"))
    for sampler in ("tpe", "nsga2", "random", "engine"):
        fitted = space.model_copy(update={"search": space.search.model_copy(
            update={"sampler": sampler})})
        for trials, worker in ((0, False), (7, False), (7, True)):
            seed = resumption_seed(fitted.search.seed, trials, worker)
            make_sampler(fitted, seed)
            np.random.seed(seed)  # seed_everything's
    assert resumption_seed(4294967295, 2, False) == 1


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "1.0e400"])
@pytest.mark.parametrize("budget", ["latency_p90_ms", "model_size_mb", "fidelity_cosine_min"])
def test_an_infinite_or_nan_budget_is_refused_and_explained(tmp_path, value, budget):
    for name, text, load in (
            ("space.yaml", GOOD_SPACE, load_search_space),
            ("device.yaml", DEVICE, load_device_profile)):
        path = write(tmp_path, text + f"budgets: {{{budget}: {value}}}\n", name)
        with pytest.raises(ConfigError, match=rf"{path}: invalid (search space|device profile): "
                                              rf"key 'budgets.{budget}': expected a finite "
                                              r"number: YAML reads \.inf"):
            load(path)


@pytest.mark.parametrize("text", [
    "finetune: {max_seconds: .inf}\n",
    "dataset: {builtin: digits, preprocessing: {mean: [.nan], std: [1.0]}}\n",
    "search: {enqueue: [{keep_stage1: .inf}]}\n",
])
def test_no_number_of_a_config_may_be_infinite_or_nan(tmp_path, text):
    space = GOOD_SPACE.replace("dataset: {builtin: digits}\n", "") if "dataset" in text \
        else GOOD_SPACE
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_search_space(write(tmp_path, space + text))


@pytest.mark.parametrize("extra, error", [
    ("objectives: [accuracy, tokens_per_s]\n",
     "key 'objectives': 'tokens_per_s' is not a metric; allowed: accuracy, latency_p50_ms, "
     "latency_p90_ms, model_size_mb, peak_memory_mb, power_mean_w"),
    # the Measurement attribute's spelling is not a metric's name
    ("objectives: [accuracy, latency_ms_p90]\n", "'latency_ms_p90' is not a metric; allowed:"),
    ("budgets: {latency_ms_p90: 2.0}\n",
     "key 'budgets': 'latency_ms_p90' is not a metric a budget can bound; allowed: "
     "latency_p50_ms, latency_p90_ms, model_size_mb, peak_memory_mb, power_mean_w, power_peak_w, "
     "energy_mj_per_inference, decode_tokens_per_s, prefill_tokens_per_s, ttft_ms_p50, "
     "ttft_ms_p90, energy_mj_per_token, perplexity, mcq_accuracy, energy_basis, "
     "fidelity_cosine_min"),
    ("budgets: {accuracy: 0.9}\n", "'accuracy' is not a metric a budget can bound"),
    ("budgets: {peak_memory_mb: -5}\n", "key 'budgets.peak_memory_mb': Input should be greater "
                                        "than 0 (got -5)"),
])
def test_objectives_and_budgets_name_registered_metrics(tmp_path, extra, error):
    with pytest.raises(ConfigError) as caught:
        load_search_space(write(tmp_path, GOOD_SPACE + extra))
    assert str(tmp_path / "space.yaml") in str(caught.value) and error in str(caught.value)


def test_a_metric_registered_at_run_time_is_an_objective_and_a_floor(tmp_path):
    from hwnas import metrics
    from hwnas.metrics import Metric

    metric = metrics.register(Metric(
        "inferences_per_s", "inferences/s", True, "measurement", "throughput (inferences/s)", "inf/s",
        read=lambda measurement, _artifact, _basis: 1000.0 / measurement.latency_ms_p90))
    try:
        space = load_search_space(write(tmp_path, GOOD_SPACE + (
            "objectives: [accuracy, inferences_per_s]\n"
            "budgets: {inferences_per_s: 20, peak_memory_mb: 256}\n")))
        assert space.objectives == ["accuracy", "inferences_per_s"]
        assert space.budgets.limits() == {"inferences_per_s": 20.0, "peak_memory_mb": 256.0}
        assert metrics.directions(space.objectives) == ["maximize", "maximize"]
        # a profile's budgets fill the gaps the space leaves, plug-in metrics too
        device = load_device_profile(write(tmp_path, DEVICE + "budgets: {inferences_per_s: 5, "
                                           "latency_p90_ms: 3}\n", "d.yaml"))
        assert effective_budgets(space, device).limits() == {
            "inferences_per_s": 20.0, "peak_memory_mb": 256.0, "latency_p90_ms": 3.0}
    finally:
        metrics.unregister(metric.name)
    with pytest.raises(ConfigError, match="'inferences_per_s' is not a metric"):
        load_search_space(write(tmp_path, GOOD_SPACE + "objectives: [accuracy, inferences_per_s]\n"))


@pytest.mark.parametrize("section, error", [
    ("{sensitivity: yes please}", r"search.sensitivity.*give true, false, or \{keep_ratios"),
    ("{sensitivity: {keep_ratios: [0.5, 1.0]}}", r"search.sensitivity.keep_ratios.*below 1.0 only"),
    ("{sensitivity: {samples: 2}}", r"search.sensitivity.samples.*greater than or equal to 8"),
    ("{sensitivity: {sample: 64}}", r"'search.sensitivity.sample': unknown key; allowed keys here: keep_ratios, samples"),
])
def test_sensitivity_settings_are_checked(tmp_path, section, error):
    with pytest.raises(ConfigError, match=error):
        load_search_space(write(tmp_path, GOOD_SPACE + f"search: {section}\n"))


def test_the_engine_order_that_was_taken_out_is_read_or_refused_with_why(tmp_path):
    old = load_search_space(write(tmp_path, GOOD_SPACE + "search: {engine_order: uniform}\n"))
    assert "engine_order" not in old.search.model_dump()
    with pytest.raises(ConfigError, match=r"search.*engine_order was taken out: ordering the "
                                          r"engine by per-unit sensitivity did not pay"):
        load_search_space(write(tmp_path, GOOD_SPACE + "search: {sampler: engine, engine_order: "
                                                       "sensitivity}\n"))


def test_sensitivity_is_off_unless_asked_for(tmp_path):
    assert load_search_space(write(tmp_path, GOOD_SPACE)).search.sensitivity is None
    on = load_search_space(write(tmp_path, GOOD_SPACE + "search: {sensitivity: true}\n"))
    assert on.search.sensitivity.keep_ratios == [0.75, 0.5, 0.25]
    off = load_search_space(write(tmp_path, GOOD_SPACE + "search: {sensitivity: false}\n"))
    assert off.search.sensitivity is None
