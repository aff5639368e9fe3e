"""One prepared check for a machine with an NVIDIA GPU (issue 24.5): the controller's
accelerator (--torch-device) and the GPU paths, in at most 8 minutes, into one JSON.

Made for a bare machine: torch with CUDA, onnxruntime (CPU), nvidia-ml-py, no internet and no
hwnas installed. It runs from a copy of this repository:

    PYTHONPATH=$PWD:$PWD/agents python benchmarks/gpu_check.py [--wheels DIR] [--budget-s 450]

Sections, each recorded as ok / skipped / failed with its reason and seconds, the JSON
rewritten after each (a killed run keeps what it found):

  imports        what is importable, with versions (--wheels DIR: the missing ones installed
                 from that folder first, pip --no-index)
  torch_device   what --torch-device resolves to here; cuda:0 accepted or refused
  finetune       the default search's fine-tune (its model and settings, one pruned
                 candidate, same seed, same steps) on the CPU and on the accelerator side by
                 side: medians of --repeats runs, the speed-up, both final losses
  search         the default search, a few trials, with --torch-device on the accelerator:
                 the device recorded in the study and in each trial's fine-tune report
                 (budgets relaxed so that no trial is rejected before its fine-tune)
  nvml_power     one NVML read (nvidia-ml-py), then a search whose device profile reads its
                 power from NVML (`power: {source: nvml}`)
  agent_gpu      tests/agent/test_gpu.py (CUDA / TensorRT EPs, NVML during a GPU job)

Where Fashion-MNIST's idx files are absent (Debian's dataset-fashion-mnist), the search runs
on scikit-learn's bundled digits and the fine-tune on random images of Fashion-MNIST's shape
(speed does not depend on the pixels); the JSON says which. Without a GPU, --dry-run runs
every section's code path briefly with the CPU standing in for the accelerator and says that
CUDA is absent (benchmarks/results/gpu_check_dry_run.json).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SPACE = ROOT / "search_spaces" / "fashion_mnist.yaml"
# module -> distribution (what pip installs from --wheels)
MODULES = {"torch": "torch", "numpy": "numpy", "onnxruntime": "onnxruntime", "onnx": "onnx",
           "optuna": "optuna", "torch_pruning": "torch-pruning", "pydantic": "pydantic",
           "yaml": "pyyaml", "sklearn": "scikit-learn", "paramiko": "paramiko",
           "pynvml": "nvidia-ml-py", "pytest": "pytest", "onnxscript": "onnxscript"}

# what importing hwnas's search and fine-tune needs (the rest: only some sections)
NEEDED = ("torch", "numpy", "onnxruntime", "onnx", "optuna", "torch_pruning", "pydantic", "yaml")


class Check:
    """The JSON being built: sections in order, written after each one."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.started, self.budget_s = path, time.monotonic(), budget_s
        self.doc: dict[str, Any] = {"budget_s": budget_s, "argv": sys.argv[1:], "sections": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def run(self, name: str, body: Callable[[], dict[str, Any]], needs_s: float = 5.0) -> None:
        began = time.monotonic()
        if self.left() < needs_s:
            entry = {"status": "skipped", "reason": f"{self.left():.0f} s of the budget left"}
        else:
            try:
                entry = {"status": "ok", **body()}
            except Skip as why:
                entry = {"status": "skipped", "reason": str(why)}
            except Exception as exc:  # one section's failure is reported, the rest still run
                entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        entry["seconds"] = round(time.monotonic() - began, 2)
        self.doc["sections"][name] = entry
        print(f"[{name}] {entry['status']} ({entry['seconds']} s): "
              f"{entry.get('reason') or entry.get('error') or entry.get('summary', '')}", flush=True)
        self.write()

    def write(self) -> None:
        self.doc["total_seconds"] = round(time.monotonic() - self.started, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1, sort_keys=True, default=str))


class Skip(Exception):
    """A section that cannot run here, and why."""


def imports(wheels: Path | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module in MODULES:
        try:
            found[module] = getattr(importlib.import_module(module), "__version__", "present")
        except Exception as exc:
            found[module] = f"MISSING: {type(exc).__name__}: {exc}"[:300]
    missing = [MODULES[m] for m, v in found.items() if str(v).startswith("MISSING")]
    installed = None
    if wheels is not None and missing:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index",
                               "--find-links", str(wheels), *missing],
                              capture_output=True, text=True, timeout=180)
        installed = {"asked": missing, "rc": done.returncode, "tail": done.stdout[-1500:] +
                     done.stderr[-1500:]}
        importlib.invalidate_caches()
        for module in MODULES:
            if str(found[module]).startswith("MISSING"):
                try:
                    found[module] = getattr(importlib.import_module(module), "__version__",
                                            "present")
                except Exception:
                    pass
    still = [m for m, v in found.items() if str(v).startswith("MISSING")]
    blocking = [MODULES[m] for m in still if m in NEEDED]
    advice = (f"; hwnas cannot run without {', '.join(blocking)}: give a folder of their "
              f"wheels with --wheels DIR" if blocking else "")
    return {"modules": found, "wheels_installed": installed, "missing": still,
            "hwnas_blocked_by": blocking, "summary": f"missing: {', '.join(still) or 'none'}{advice}"}


def torch_device(dry_run: bool) -> dict[str, Any]:
    import torch

    from hwnas.errors import ConfigError
    from hwnas.torch_device import available, describe, resolve

    try:
        cuda0 = describe(resolve("cuda:0"))
    except ConfigError as exc:
        cuda0 = f"refused: {exc}"
    auto = resolve("auto")
    accelerator = "cpu" if dry_run else str(auto)
    return {"available": available(), "auto": describe(auto), "cuda:0": cuda0,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_present": torch.cuda.is_available(), "accelerator_used": accelerator,
            "dry_run": dry_run,
            "summary": f"auto -> {describe(auto)}; CUDA {'present' if torch.cuda.is_available() else 'ABSENT'}"}


def fashion_task() -> tuple[Any, str]:
    """The default search's data, else random images of its shape (speed only)."""
    import numpy as np

    from hwnas.config import load_search_space
    from hwnas.data import ArraySplit, load_task

    space = load_search_space(DEFAULT_SPACE)
    try:
        return load_task(space.dataset), "fashion-mnist"
    except Exception as exc:
        rng = np.random.default_rng(0)

        class Synthetic:
            name, input_shape, num_classes = "synthetic", (1, 28, 28), 10
            train = ArraySplit(rng.normal(size=(6000, 1, 28, 28)).astype(np.float32),
                               rng.integers(0, 10, 6000))

        return Synthetic(), f"random images 1x28x28 ({type(exc).__name__}: {str(exc)[:200]})"


def finetune_speed(accelerator: str, steps: int, repeats: int) -> dict[str, Any]:
    import torch

    from hwnas.compress.finetune import finetune
    from hwnas.config import load_search_space
    from hwnas.models.build import build_model
    from hwnas.models.transformers import split_attention
    from hwnas.train import resolve_stages

    space = load_search_space(DEFAULT_SPACE)
    task, data = fashion_task()
    torch.manual_seed(0)
    teacher = build_model(space.base_model, task.input_shape, task.num_classes, lambda _: None)
    split_attention(teacher)
    teacher.eval()
    stages = resolve_stages(teacher, space.base_model, task.input_shape)
    try:
        from hwnas.compress.prune import prune, pruning_setup
        from hwnas.knobs.candidate import Candidate

        spec = space.model_copy(update={"base_model": space.base_model.model_copy(
            update={"stages": {k: list(v) for k, v in stages.items()}})})
        setup = pruning_setup(teacher, stages, spec, task.input_shape, task.num_classes, 8)
        candidate = Candidate.build({stage: 0.5 for stage in stages}, "l1", 0.1, {})
        student = prune(setup, candidate, []).module
        what = "keep 0.5 per stage, l1, global ratio 0.1 (torch-pruning)"
    except Exception as exc:
        student = copy.deepcopy(teacher)
        what = f"the unpruned model (pruning failed: {type(exc).__name__}: {str(exc)[:200]})"
    settings = space.finetune.model_copy(update={"max_steps": steps, "max_seconds": 1e6})
    sides = (("cpu", "cpu"), ("accelerator", accelerator))
    for _, device in sides:  # warm-up: the CUDA context, kernels, the teacher's copy
        finetune(copy.deepcopy(student), teacher, task,
                 settings.model_copy(update={"max_steps": 3}), seed=0, device=device)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in sides}
    for _ in range(repeats):  # interleaved: a machine's slow minute costs both sides alike
        for label, device in sides:
            runs[label].append(finetune(copy.deepcopy(student), teacher, task, settings,
                                        seed=0, device=device))
    median = {k: sorted(r["seconds"] for r in v)[len(v) // 2] for k, v in runs.items()}
    speedup = median["cpu"] / median["accelerator"] if median["accelerator"] > 0 else None
    return {"candidate": what, "data": data, "steps": steps, "repeats": repeats,
            "batch_size": settings.batch_size, "cpu_threads": torch.get_num_threads(),
            "runs": runs, "median_seconds": median, "speedup": speedup,
            "final_loss": {k: [r["final_loss"] for r in v] for k, v in runs.items()},
            "summary": f"{steps} steps: cpu {median['cpu']:.2f} s, {runs['accelerator'][0]['device']}"
                       f" {median['accelerator']:.2f} s, speed-up {speedup:.2f}x"}


def search_space_copy(folder: Path, trials: int, steps: int) -> tuple[Path, str]:
    """The default search with fewer trials and steps; on digits where Fashion-MNIST is absent."""
    import yaml

    document = yaml.safe_load(DEFAULT_SPACE.read_text())
    document["search"].update(n_trials=trials)
    document["finetune"].update(max_steps=steps)
    # budgets every candidate meets: no trial is rejected before its fine-tune on the GPU
    document["budgets"] = {"model_size_mb": 1.0}
    data = "fashion-mnist"
    if not fashion_task()[1] == "fashion-mnist":
        document["dataset"] = {"builtin": "digits", "validation_fraction": 0.15,
                               "calibration_samples": 64}
        data = "digits (Fashion-MNIST absent)"
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, data


def hwnas(args: list[Any], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agents"),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "hwnas.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def search(folder: Path, device_yaml: str, accelerator: str, trials: int, steps: int,
           timeout: float) -> dict[str, Any]:
    from hwnas.run import RunFolder, outcomes

    space, data = search_space_copy(folder, trials, steps)
    device = folder / "device.yaml"
    device.write_text(device_yaml)
    run_dir = folder / "run"
    done = hwnas(["search", space, "--device", device, "--run-dir", run_dir, "--no-progress",
                  "--torch-device", accelerator], timeout)
    if done.returncode != 0:
        raise RuntimeError(f"hwnas search exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    study = RunFolder.load(run_dir).open_study()
    found = outcomes(study)
    tuned = [o for o in found if o.finetune is not None and o.finetune.steps > 0]
    elsewhere = [o.finetune.device for o in tuned
                 if not str(o.finetune.device).startswith(accelerator)]
    if not tuned or elsewhere:
        raise RuntimeError(f"{len(tuned)} trials fine-tuned, on {elsewhere or 'nothing'} "
                           f"where {accelerator} was asked for")
    power = [o.measurement.power.to_dict() for o in found
             if o.measurement is not None and o.measurement.power is not None]
    return {"data": data, "budgets": "model_size_mb 1.0 only (every trial fine-tunes)",
            "trials": len(found), "study_torch_device":
            study.user_attrs.get("torch_device"),
            "finetune": [o.finetune.to_dict() for o in tuned],
            "finetune_devices": sorted({str(o.finetune.device) for o in tuned}),
            "timings_s": [dict(o.timings_s) for o in found], "power": power[:4],
            "summary": f"{len(found)} trials on {data}; study torch_device "
                       f"{study.user_attrs.get('torch_device')}; power figures {len(power)}"}


def device_yaml(power_source: str) -> str:
    return ("name: gpu-check-local\nconnection: {kind: local}\n"
            "runtime: {execution_providers: [CPUExecutionProvider], intra_op_threads: 1}\n"
            "precisions: [fp32, int8]\nchannel_multiple: 8\n"
            f"power: {{source: {power_source}}}\n"
            "budgets: {model_size_mb: 1.0}\n"
            "measurement: {warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50, "
            "min_seconds: 0.3, rounds: 2}\n")


def nvml_read() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError as exc:
        raise Skip(f"nvidia-ml-py absent ({exc})") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        raise Skip(f"NVML not usable here: {exc}") from None
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    reading = {"gpus": pynvml.nvmlDeviceGetCount(),
               "name": name.decode() if isinstance(name, bytes) else name,
               "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
               "driver": str(pynvml.nvmlSystemGetDriverVersion())}
    try:
        reading["energy_mj"] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        reading["energy_mj"] = f"unsupported: {exc}"
    return reading


def agent_gpu_tests(timeout: float) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest absent (give it with --wheels DIR)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agents")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/agent/test_gpu.py"], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    return {"rc": done.returncode, "counts": counts, "tail": done.stdout[-3000:],
            "summary": last}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: every section briefly, the CPU as the accelerator")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (300)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per device (3)")
    parser.add_argument("--trials", type=int, default=None, help="search trials (4)")
    parser.add_argument("--wheels", type=Path, default=None, help="a folder of wheels to install")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write")
    args = parser.parse_args(argv)
    dry = args.dry_run
    steps = args.steps or (20 if dry else 300)
    repeats = args.repeats or (1 if dry else 3)
    trials = args.trials or (1 if dry else 4)
    out = args.out or RESULTS / ("gpu_check_dry_run.json" if dry else "gpu_check.json")
    check = Check(out, args.budget_s)
    check.run("imports", lambda: imports(args.wheels), needs_s=1)
    check.run("torch_device", lambda: torch_device(dry), needs_s=1)
    chosen = check.doc["sections"]["torch_device"].get("accelerator_used")
    if chosen is None or (chosen == "cpu" and not dry):
        check.doc["no_accelerator"] = "CUDA is absent here: the accelerator sections were " \
                                      "skipped (run with --dry-run for the CPU stand-in)"
        print(check.doc["no_accelerator"])
        check.write()
        return 1
    check.run("finetune", lambda: finetune_speed(chosen, steps, repeats), needs_s=30)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        (folder / "search").mkdir()
        check.run("search", lambda: search(folder / "search", device_yaml("none"), chosen, trials,
                                           steps, max(30.0, check.left() - 150)), needs_s=60)

        def power() -> dict[str, Any]:
            reading = nvml_read()
            (folder / "power").mkdir()
            found = search(folder / "power", device_yaml("nvml"), chosen, 2, min(steps, 50),
                           max(30.0, check.left() - 90))
            return {"nvml": reading, "search": found,
                    "summary": f"{reading['name']} {reading['power_w']:.0f} W; "
                               f"{found['summary']}"}

        check.run("nvml_power", power, needs_s=45)
    check.run("agent_gpu", lambda: agent_gpu_tests(max(20.0, check.left() - 5)), needs_s=20)
    failed = [n for n, s in check.doc["sections"].items() if s["status"] == "failed"]
    print(f"\nwrote {out} ({check.doc['total_seconds']:.0f} s); failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
