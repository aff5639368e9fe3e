"""Searches over the new precisions, end to end through the real agent: fp16 on this CPU, and
Qualcomm's HTP through the onnxruntime-qnn simulator, where candidates the NPU refuses are
rejected before fine-tuning with the op named, and no simulated figure is a latency."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from hwnas.export.precision import realised_precisions
from hwnas.records import TrialStage
from hwnas.report import Report, text_table
from hwnas.run import RunFolder, outcomes
from hwnas.search import run_search
from tests.conftest import DIGITS_SPACE, FAST_DEVICE, REPO

HWNAS = str(Path(sys.executable).parent / "hwnas")
STAGES = ("stage1", "stage2", "stage3", "head")


def enqueue(**plans):
    rows = []
    for plan in plans.values():
        params = {"keep_stage1": 0.5, "keep_stage2": 0.5, "keep_stage3": 0.5,
                  "pruning_criterion": "l1", "global_pruning_ratio": 0.0}
        params.update({f"precision_{s}": p for s, p in zip(STAGES, plan)})
        rows.append("    - " + json.dumps(params))
    return "\n".join(rows)


def test_the_cpu_search_can_pick_fp16_and_records_fidelity(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(DIGITS_SPACE.replace("budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}",
                                          "budgets: {model_size_mb: 1.0, fidelity_cosine_min: 0.99}")
                     + "search:\n  n_trials: 1\n  enqueue:\n"
                     + enqueue(fp16=("fp16", "fp32", "fp16", "int8")) + "\n")
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE.replace("precisions: [fp32, int8]", "precisions: [fp32, fp16, int8]"))
    outcome = run_search(space, device, tmp_path / "run", progress=False, log=lambda _: None)
    (trial,) = outcomes(outcome.study)
    assert trial.stage == TrialStage.EVALUATED
    artifact = outcome.run.kept_artifact(trial, outcome.study)
    realised = set(realised_precisions(onnx.load(artifact.path)).values())
    assert realised == {"fp16", "fp32", "int8"}
    fidelity = trial.output_fidelity
    assert fidelity.samples > 0 and fidelity.cosine_mean > 0.99 and not fidelity.emulated
    assert fidelity.runtime == "CPUExecutionProvider on the controller"
    assert set(dict(trial.constraints)) == {"latency_p90_ms", "model_size_mb", "fidelity_cosine_min"}
    assert "fidelity" in text_table([trial])


# the digits space, searched on the simulator with the engine (the default policy, accelerator
# screening inside its one pipeline): no latency objective or budget (see below)
HTP_SPACE = DIGITS_SPACE.replace(
    "precision: {granularity: stage}",
    "precision: {granularity: stage, calibration: [minmax, percentile]}").replace(
    "budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}",
    "objectives: [accuracy, model_size_mb]\nbudgets: {model_size_mb: 1.0, fidelity_cosine_min: 0.98}"
) + "search:\n  n_trials: 3\n  seed: 1\n  sampler: engine\n  enqueue:\n"


@pytest.fixture(scope="module")
def htp_search(tmp_path_factory):
    pytest.importorskip("onnxruntime_qnn", reason="the QNN simulator needs pip install onnxruntime-qnn")
    folder = tmp_path_factory.mktemp("htp")
    space = folder / "space.yaml"
    space.write_text(HTP_SPACE + enqueue(whole=("a16w8", "int8", "int8", "fp16"),
                                         refused=("int8", "int8", "int8", "int8_weight_only")) + "\n")
    # the local HTP profile, also offering a precision the HTP cannot run
    device = folder / "htp.yaml"
    device.write_text((REPO / "device_profiles" / "local-qnn-htp.yaml").read_text().replace(
        "precisions: [fp32, fp16, int8, a16w8]", "precisions: [fp32, fp16, int8, a16w8, int8_weight_only]"))
    outcome = run_search(space, device, folder / "run", progress=False, log=HTP_LOG.append)
    return space, device, outcome


HTP_LOG: list[str] = []  # what the HTP search printed


def test_htp_candidates_the_npu_refuses_are_rejected_naming_the_op(htp_search):
    _, _, outcome = htp_search
    found = outcomes(outcome.study)
    refused = found[1]
    assert refused.stage == TrialStage.REJECTED and refused.finetune is None
    assert "cannot run on QNNExecutionProvider" in refused.rejection
    assert "DequantizeLinear" in refused.rejection
    assert "in unit head (int8_weight_only)" in refused.rejection
    assert dict(refused.constraints)["accelerator_compatible"] > 0
    # after the user's two candidates, the engine proposed the third, screened alike
    third = outcome.study.get_trials()[2]
    assert third.user_attrs["proposed_by"] in ("ladder_start", "budget_exchange", "model_pool")
    assert "accelerator_compatible" in third.constraints


def test_htp_candidates_that_compile_carry_simulated_fidelity(htp_search):
    _, _, outcome = htp_search
    whole = outcomes(outcome.study)[0]
    assert whole.stage == TrialStage.EVALUATED
    assert dict(whole.constraints)["accelerator_compatible"] <= 0
    assert whole.measurement.emulated and whole.screen_measurement.emulated
    assert whole.output_fidelity.emulated and "QNNExecutionProvider" in whole.output_fidelity.runtime
    assert 0.9 < whole.output_fidelity.cosine_mean <= 1.0
    assert "latency_p90_ms" not in dict(whole.constraints)
    assert whole.candidate.calibration_method in ("minmax", "percentile")


def test_nothing_in_the_report_calls_a_simulated_figure_a_latency(htp_search, tmp_path):
    from hwnas.report.card import export_trial

    _, _, outcome = htp_search
    report = Report.of(outcome.study)
    table = text_table(report.outcomes)
    evaluated = [o for o in report.outcomes if o.stage == TrialStage.EVALUATED]
    for line in table.splitlines()[2:]:
        number = int(line.split()[0])
        if any(o.number == number for o in evaluated):
            assert "emulated" in line
    measurement = evaluated[0].measurement
    assert f"{measurement.latency_ms_p90:.3f}" not in table
    # nor what the search printed: the base model's line, the best model's time per module
    base = [line for line in HTP_LOG if line.startswith("base model (unpruned")]
    assert len(base) == 1 and "latency not measured (emulated" in base[0], HTP_LOG
    assert not [line for line in HTP_LOG if "latency p90" in line or " ms" in line], HTP_LOG
    assert all("of the simulator" in line for line in HTP_LOG if "most time" in line)
    paths = export_trial(RunFolder.load(outcome.run.path), evaluated[0].number, tmp_path)
    card = json.loads(paths["card"].read_text())
    assert card["latency_is_device_latency"] is False and card["output_fidelity"]["emulated"] is True


def test_a_latency_objective_on_the_simulator_is_refused_up_front(htp_search, tmp_path):
    space, device, _ = htp_search
    latency = tmp_path / "latency.yaml"
    latency.write_text(space.read_text().replace("objectives: [accuracy, model_size_mb]",
                                                 "objectives: [accuracy, latency_p90_ms]"))
    done = subprocess.run([HWNAS, "search", str(latency), "--device", str(device), "--run-dir",
                           str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "simulated on x86_64" in done.stderr and "latency_p90_ms" in done.stderr
