"""Shared fixtures: real ONNX models, a real agent subprocess, a small digits search."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hwnas.disk import cache_folder

REPO = Path(__file__).resolve().parent.parent
# the user's own cache, read before the session's isolated one replaces it: what is slow to
# build and that no test changes (the aarch64 box's root file system) is kept there
USER_CACHE = cache_folder()


_BOX_BUILD: subprocess.Popen | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """The aarch64 box's root file system (tests/remote/test_aarch64.py) is built once per
    machine, ~2.5 min on a bare one (CI's): where its tests are to run and it is not cached,
    the build starts now, in the background at the lowest priority, and is ready when they
    come (their fixture waits on the build's lock). Its output: <cache>/aarch64-box-build.log."""
    global _BOX_BUILD
    box_tests = Path(__file__).parent / "remote" / "test_aarch64.py"
    if session.config.option.collectonly or not any(item.path == box_tests
                                                    for item in session.items):
        return
    from hwnas.testing import arm64_root

    if arm64_root.is_built(USER_CACHE) or arm64_root.missing_tools():
        return  # nothing to build, or the tests say what is missing themselves
    USER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(USER_CACHE / "aarch64-box-build.log", "w") as log:
        _BOX_BUILD = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-u", "-m", "hwnas.testing.aarch64", "build"],
            env=dict(os.environ, HWNAS_CACHE_DIR=str(USER_CACHE)), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A build still running is never cut short (debootstrap's second stage holds mounts):
    the run waits for it, saying so, or on Ctrl-C leaves it to finish on its own."""
    if _BOX_BUILD is None or _BOX_BUILD.poll() is not None:
        return
    log = USER_CACHE / "aarch64-box-build.log"
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        print(f"\nthe aarch64 box's root is still building (pid {_BOX_BUILD.pid}, {log}); it "
              f"finishes on its own")
        return
    print(f"\nwaiting for the aarch64 box's root to finish building (pid {_BOX_BUILD.pid}, "
          f"{log})", flush=True)
    _BOX_BUILD.wait()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HWNAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("hwnas-cache"))


def export_onnx(module, input_shape, path: Path) -> Path:
    import torch

    module.eval()
    torch.onnx.export(module, (torch.zeros((1, *input_shape)),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real ONNX models of different sizes."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    medium = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(16 * 8 * 8, 10))
    large = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64 * 8 * 8, 10))
    for name, module in (("small", small), ("medium", medium), ("large", large)):
        export_onnx(module, (1, 8, 8), folder / f"{name}.onnx")
    return folder


@pytest.fixture(scope="session")
def genai_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama as onnxruntime-genai's model builder writes it (genai_config.json,
    model.onnx, model.onnx.data, tokenizer files), int4; skips where onnxruntime-genai is
    not installed."""
    pytest.importorskip("onnxruntime_genai")
    from hwnas.testing.llm import tiny_causal_lm, tiny_genai_folder

    root = tmp_path_factory.mktemp("genai")
    return tiny_genai_folder(tiny_causal_lm(root / "hf", "llama"), root / "genai", "int4")


@pytest.fixture()
def local_agent(tmp_path: Path):
    """The real agent as a subprocess on a free loopback port; yields (client, process)."""
    from hwnas.remote.local import LocalAgentProcess

    process = LocalAgentProcess(tmp_path / "agent-state")
    process.start()
    try:
        yield process.client("test-agent"), process
    finally:
        process.stop()


FAST_DEVICE = """\
name: test-local
connection: {kind: local}
runtime: {execution_providers: [CPUExecutionProvider], intra_op_threads: 1}
precisions: [fp32, int8]
channel_multiple: 8
budgets: {latency_p90_ms: 2.0, model_size_mb: 1.0}
measurement: {warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50,
              min_seconds: 0.2, rounds: 2}
"""

# the agent's generation runtime on this machine, a short measurement (language models)
GENAI_DEVICE = """\
name: test-genai
connection: {kind: local}
runtime: {name: genai, intra_op_threads: 1}
measurement: {warmup_iterations: 1, warmup_seconds: 0, min_iterations: 3, min_seconds: 0,
              rounds: 1, prompt_tokens: 16, generate_tokens: 8}
"""

DIGITS_SPACE = """\
name: digits-test
base_model:
  builtin: small_cnn
  train: {epochs: 8, batch_size: 64, learning_rate: 0.003}
dataset: {builtin: digits, validation_fraction: 0.15, calibration_samples: 64}
knobs:
  width: {keep_ratios: [0.25, 0.5, 1.0]}
  pruning: {criteria: [l1, saliency], global_ratios: [0.0, 0.2]}
  precision: {granularity: stage}
finetune: {max_steps: 60, max_seconds: 60, batch_size: 64, learning_rate: 0.003}
budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}
"""


@pytest.fixture()
def digits_config(tmp_path: Path) -> tuple[Path, Path]:
    space = tmp_path / "digits.yaml"
    device = tmp_path / "device.yaml"
    space.write_text(textwrap.dedent(DIGITS_SPACE) + ENQUEUED)
    device.write_text(FAST_DEVICE)
    return space, device


# one candidate that meets the 0.1 MB budget for sure, one that cannot
ENQUEUED = """\
search:
  n_trials: 5
  seed: 3
  enqueue:
    - {keep_stage1: 0.25, keep_stage2: 0.25, keep_stage3: 0.25, pruning_criterion: saliency,
       global_pruning_ratio: 0.0, precision_stage1: int8, precision_stage2: int8,
       precision_stage3: int8, precision_head: int8}
    - {keep_stage1: 1.0, keep_stage2: 1.0, keep_stage3: 1.0, pruning_criterion: l1,
       global_pruning_ratio: 0.0, precision_stage1: fp32, precision_stage2: fp32,
       precision_stage3: fp32, precision_head: fp32}
"""
