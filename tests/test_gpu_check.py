"""benchmarks/gpu_check.py on a machine without a GPU: it says CUDA is absent and stops; with
--dry-run it runs its sections with the CPU standing in (a small budget: the search and the
agent's GPU tests are left out for time, and say so)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="for a machine without CUDA")


def test_without_a_gpu_it_says_cuda_is_absent_and_stops(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    found = json.loads(out.read_text())
    assert found["sections"]["torch_device"]["cuda_present"] is False
    assert "CUDA is absent" in found["no_accelerator"]
    assert set(found["sections"]) == {"imports", "torch_device"}


def test_a_dry_run_exercises_the_fine_tune_side_by_side(tmp_path):
    out = tmp_path / "dry.json"
    assert gpu_check.main(["--dry-run", "--steps", "2", "--budget-s", "60",
                           "--out", str(out)]) == 0
    sections = json.loads(out.read_text())["sections"]
    assert sections["torch_device"]["accelerator_used"] == "cpu"
    assert sections["torch_device"]["cuda:0"].startswith("refused: --torch-device cuda:0")
    tune = sections["finetune"]
    assert tune["status"] == "ok", tune
    assert [r["steps"] for r in tune["runs"]["cpu"] + tune["runs"]["accelerator"]] == [2, 2]
    assert tune["final_loss"]["cpu"] == tune["final_loss"]["accelerator"]  # same seed, same CPU
    assert sections["search"]["status"] == "skipped" and "budget" in sections["search"]["reason"]
