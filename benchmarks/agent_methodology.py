"""Can the agent's figures be trusted? Agreement, repeatability and overhead, on this machine.

    .venv/bin/python benchmarks/agent_methodology.py

- agreement: the agent's p50 against a plain tight loop of the same onnxruntime session
  settings (1 intra-op thread, sequential, all graph optimisations) in a separate process,
  on three models of different sizes; ratio agent / loop per model (1.0 = agreement);
- repeatability: the spread of the p50 over 6 separate jobs of the same model;
- overhead: the share of a job's wall time that is neither warm-up nor timed inference
  (worker start, session load, provenance, result writing).
Jobs and loops alternate per model so that drift of this shared machine hits both alike.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, save, table  # noqa: E402

from hwnas_agent.protocol import MeasureRequest  # noqa: E402

from hwnas.records import Artifact  # noqa: E402
from hwnas.remote.local import LocalAgentProcess  # noqa: E402

REPEATS = 6
TIGHT_LOOP = """
import sys, time, numpy as np, onnxruntime as ort
path, iterations = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
meta = session.get_inputs()[0]
x = {meta.name: np.random.default_rng(0).standard_normal([1] + list(meta.shape[1:])).astype(np.float32)}
for _ in range(max(10, iterations // 10)):
    session.run(None, x)
times = []
for _ in range(iterations):
    start = time.perf_counter_ns(); session.run(None, x); times.append(time.perf_counter_ns() - start)
print(float(np.median(times)) / 1e6)
"""


def make_models(folder: Path) -> dict[str, Path]:
    import torch
    from torch import nn

    torch.manual_seed(0)

    def convnet(width: int, depth: int, size: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    specs = {"small": (16, 1, 16), "medium": (32, 3, 32), "large": (64, 4, 64)}
    paths = {}
    for name, (width, depth, size) in specs.items():
        path = folder / f"{name}.onnx"
        model = convnet(width, depth, size).eval()
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        paths[name] = path
    return paths


def request(sha: str) -> MeasureRequest:
    return MeasureRequest(model_sha256=sha, warmup_iterations=20, warmup_seconds=0.5,
                          min_iterations=200, min_seconds=2.0, rounds=5)


def tight_loop(path: Path, iterations: int) -> float:
    done = subprocess.run([sys.executable, "-c", TIGHT_LOOP, str(path), str(iterations)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp))
        agent = LocalAgentProcess(Path(tmp) / "state")
        agent.start()
        client = agent.client("local")
        try:
            agreement, overheads, repeat_p50 = [], [], []
            for name, path in models.items():
                artifact = Artifact.from_file(path, {}, 0)
                client.ensure_model(artifact)
                agent_p50, loop_p50 = [], []
                for _ in range(3):  # alternate agent job and tight loop
                    job = client.wait(client.submit(request(artifact.sha256)), 600)
                    report = job["measurement"]
                    agent_p50.append(report["latency_ms"]["p50"])
                    overheads.append(1 - (report["warmup_seconds"] + report["timed_seconds"])
                                     / job["job_wall_seconds"])
                    loop_p50.append(tight_loop(path, report["iterations"]))
                agreement.append({"model": name, "size_bytes": artifact.size_bytes,
                                  "agent_p50_ms": median(agent_p50), "loop_p50_ms": median(loop_p50),
                                  "ratio_agent_over_loop": median(agent_p50) / median(loop_p50)})
                print(f"  {name}: agent {median(agent_p50):.4f} ms, loop {median(loop_p50):.4f} ms",
                      flush=True)
            medium = Artifact.from_file(models["medium"], {}, 0)
            for _ in range(REPEATS):
                job = client.wait(client.submit(request(medium.sha256)), 600)
                repeat_p50.append(job["measurement"]["latency_ms"]["p50"])
                overheads.append(1 - (job["measurement"]["warmup_seconds"]
                                      + job["measurement"]["timed_seconds"]) / job["job_wall_seconds"])
        finally:
            agent.stop()
    spread = (max(repeat_p50) - min(repeat_p50)) / median(repeat_p50)
    mean = sum(repeat_p50) / len(repeat_p50)
    cv = (sum((v - mean) ** 2 for v in repeat_p50) / (len(repeat_p50) - 1)) ** 0.5 / mean
    print()
    print(table(["model", "bytes", "agent p50 ms", "loop p50 ms", "agent/loop"],
                [[a["model"], str(a["size_bytes"]), f"{a['agent_p50_ms']:.4f}",
                  f"{a['loop_p50_ms']:.4f}", f"{a['ratio_agent_over_loop']:.3f}"] for a in agreement]))
    print(f"\nrepeatability, medium model, {REPEATS} jobs: p50s {[round(v, 4) for v in repeat_p50]} ms; "
          f"spread (max-min)/median {100 * spread:.1f}%, CV {100 * cv:.1f}%")
    print(f"overhead: median {100 * median(overheads):.1f}% of a job's wall time is neither warm-up "
          f"nor timed inference (max {100 * max(overheads):.1f}%, {len(overheads)} jobs)")
    save("agent_methodology", {
        "command": ".venv/bin/python benchmarks/agent_methodology.py",
        "agreement": agreement,
        "repeatability": {"model": "medium", "jobs": REPEATS, "p50_ms": repeat_p50,
                          "spread_of_median": spread, "cv_of_p50": cv},
        "overhead_share": {"median": median(overheads), "max": max(overheads),
                           "jobs": len(overheads)},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
