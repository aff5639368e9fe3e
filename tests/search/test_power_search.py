"""Watts in the loop, end to end (issue 9): a search with a power_mean_w budget on a device whose
power source is an external meter program (the agent's ``command`` source), through the real
agent subprocess, into constraints, the Pareto front, the report and the model card.

The meter is scripts/cpu_meter.py: a program that prints lines as USB meters do
(``12.00 V 0.3375 A 4.050 W``) from this machine's CPU busy fraction. It declares itself a
model, and every figure here is labelled as one; what is tested is the path from a meter's
lines to a budget decision, which is the same for a real meter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hwnas.records import TrialStage
from hwnas.run import RunFolder, outcomes
from hwnas.pareto import pareto_front, study_directions
from tests.conftest import DIGITS_SPACE

HWNAS = str(Path(sys.executable).parent / "hwnas")
METER = Path(__file__).resolve().parents[2] / "scripts" / "cpu_meter.py"
IDLE_W, BUSY_W = 4.0, 15.0  # the meter's model: never below 4 W

# the small int8 candidate, enqueued so that a budget it can meet is met on every run
SMALL = ("{keep_stage1: 0.25, keep_stage2: 0.25, keep_stage3: 0.25, pruning_criterion: l1, "
         "global_pruning_ratio: 0.0, precision_stage1: int8, precision_stage2: int8, "
         "precision_stage3: int8, precision_head: int8}")


def device_yaml(power_budget_w: float) -> str:
    return textwrap.dedent(f"""\
        name: metered
        connection: {{kind: local}}
        runtime: {{execution_providers: [CPUExecutionProvider], intra_op_threads: 1}}
        precisions: [fp32, int8]
        channel_multiple: 8
        power:
          source: command
          options:
            command: [{json.dumps(sys.executable)}, {json.dumps(str(METER))}, --idle-w, "{IDLE_W}",
                      --busy-w, "{BUSY_W}", --interval, "0.02"]
            rate_hz: 50
            scope: model
            covers: "linear model of CPU busy fraction, not a sensor"
        budgets: {{latency_p90_ms: 5.0, model_size_mb: 1.0, power_mean_w: {power_budget_w}}}
        measurement: {{warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50,
                      min_seconds: 0.3, rounds: 2}}
        """)


def hwnas(*args: object, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([HWNAS, *map(str, args)], capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def search(folder: Path, power_budget_w: float) -> tuple[Path, str]:
    space, device, run_dir = folder / "space.yaml", folder / "device.yaml", folder / "run"
    space.write_text(textwrap.dedent(DIGITS_SPACE).replace(
        "budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}",
        "objectives: [accuracy, energy_mj_per_inference]\n"
        "budgets: {model_size_mb: 0.1}") +
        f"search:\n  n_trials: 3\n  seed: 5\n  sampler: random\n  enqueue:\n    - {SMALL}\n")
    device.write_text(device_yaml(power_budget_w))
    done = hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress")
    return run_dir, done.stdout


@pytest.fixture(scope="module")
def reachable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return search(tmp_path_factory.mktemp("reachable"), 1000.0)


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return search(tmp_path_factory.mktemp("unreachable"), 1.0)  # the meter never reads < 4 W


def test_meter_figures_flow_into_every_measurement_and_constraint(reachable):
    run_dir, _ = reachable
    found = outcomes(RunFolder.load(run_dir).open_study())
    measured = [o for o in found if o.measurement is not None]
    assert measured
    for outcome in measured:
        power = outcome.measurement.power
        assert power is not None and power.source == "command" and power.scope == "model"
        assert power.samples > 0 and IDLE_W <= power.mean_w <= BUSY_W + 1e-6
        assert power.energy_mj_per_inference > 0
        assert "power_mean_w" in dict(outcome.constraints)
        assert dict(outcome.constraints)["power_mean_w"] <= 0  # 1000 W is never reached
    evaluated = [o for o in found if o.stage == TrialStage.EVALUATED]
    assert evaluated and all(o.screen_measurement.power is not None for o in evaluated)


def test_a_reachable_power_budget_gives_a_front_report_and_card(reachable, tmp_path):
    run_dir, output = reachable
    study = RunFolder.load(run_dir).open_study()
    front = pareto_front(outcomes(study), study_directions(study))
    assert front, output
    assert "Pareto front" in output
    report = hwnas("report", run_dir).stdout
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "mean W" in markdown or "power" in markdown.lower()
    assert "command" in markdown and "MODEL, not a sensor" in markdown
    assert (run_dir / "report" / "pareto_energy_mj_per_inference.png").is_file() or \
        any(p.name.startswith("pareto") for p in (run_dir / "report").iterdir()), report
    best = front[0]
    hwnas("export", run_dir, "--trial", best.number, "--out", tmp_path)
    card = json.loads(next(p for p in tmp_path.glob("*.json") if "plan" not in p.name).read_text())
    power = json.dumps(card)
    assert '"sensor": "command"' in power and '"scope": "model"' in power
    assert '"idle_baseline"' in power and '"rate_hz"' in power


def test_an_unreachable_power_budget_gives_an_empty_front_that_says_why(unreachable):
    run_dir, output = unreachable
    study = RunFolder.load(run_dir).open_study()
    assert pareto_front(outcomes(study), study_directions(study)) == []
    found = outcomes(study)
    for outcome in found:
        if outcome.stage == TrialStage.REJECTED:  # refused at screening: never fine-tuned
            assert "power_mean_w" in outcome.rejection and outcome.finetune is None
        assert not outcome.feasible
    assert any(o.stage == TrialStage.REJECTED for o in found)
    assert "power_mean_w" in output and "budget 1" in output
