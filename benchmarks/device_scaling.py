"""Trials per hour with 1, 2 and 4 agent devices on this machine, and the scaling efficiency.

    .venv/bin/python benchmarks/device_scaling.py

Each device is a real agent behind its own sshd on its own loopback port. The same short
digits search (the controller prunes, fine-tunes and evaluates; each device measures) runs
with each device count; efficiency = (trials/hour with N) / (N x trials/hour with 1).
All devices share this machine's 2 cores with the controller, so this measures how well the
controller keeps several devices busy, not what N real boards would give.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402

from hwnas.search import run_search  # noqa: E402
from hwnas.testing.sshd import LoopbackDevice, keygen  # noqa: E402

SPACE = """\
name: scaling
base_model: {builtin: small_cnn, train: {epochs: 8, batch_size: 64, learning_rate: 0.003}}
dataset: {builtin: digits, validation_fraction: 0.15, calibration_samples: 64}
knobs:
  width: {keep_ratios: [0.25, 0.5, 1.0]}
  pruning: {criteria: [l1, saliency], global_ratios: [0.0, 0.2]}
finetune: {max_steps: 60, max_seconds: 10, batch_size: 64}
budgets: {latency_p90_ms: 5.0, model_size_mb: 1.0}
search: {n_trials: %d, sampler: random, seed: 7}
"""
TRIALS_PER_DEVICE = 6


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = keygen(folder / "id_ed25519")
        devices = []
        try:
            for index in range(4):
                devices.append(LoopbackDevice(folder / f"dev{index}", key))
            profiles = [d.profile(f"dev{i}", pool="loopback") for i, d in enumerate(devices)]
            for count in (1, 2, 4):
                trials = TRIALS_PER_DEVICE * count
                space = folder / f"space{count}.yaml"
                space.write_text(SPACE % trials)
                started = time.perf_counter()
                run_search(space, profiles[:count], folder / f"run{count}", progress=False,
                           log=lambda _: None)
                seconds = time.perf_counter() - started
                results.append({"devices": count, "trials": trials, "seconds": seconds,
                                "trials_per_hour": trials / seconds * 3600})
                print(f"  {count} device(s): {trials} trials in {seconds:.1f} s", flush=True)
        finally:
            for device in devices:
                device.stop()
    base = results[0]["trials_per_hour"]
    for result in results:
        result["speedup"] = result["trials_per_hour"] / base
        result["efficiency"] = result["speedup"] / result["devices"]
    print(table(["devices", "trials", "seconds", "trials/hour", "speed-up", "efficiency"],
                [[str(r["devices"]), str(r["trials"]), f"{r['seconds']:.1f}",
                  f"{r['trials_per_hour']:.0f}", f"{r['speedup']:.2f}", f"{r['efficiency']:.2f}"]
                 for r in results]))
    save("device_scaling", {"command": ".venv/bin/python benchmarks/device_scaling.py",
                            "results": results, "cores": 2,
                            "note": "devices and controller share this machine's CPU"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
