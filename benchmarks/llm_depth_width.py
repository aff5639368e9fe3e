"""Depth vs width pruning at batch 1 on this CPU, measured interleaved: does dropping whole
decoder layers buy decode speed that cutting MLP units of the same weight does not?
(Shortened LLaMA's finding; benchmarks/llm_recipes.py measured each recipe once, in turn,
and its spread was larger than the difference.)

    .venv/bin/python benchmarks/llm_depth_width.py [--rounds 7] [--threads 1]
        [--save-as llm_depth_width]

The three int4 (block 32) folders of llm_recipes.py — unpruned, 6 layers dropped (block
influence), 75% of every layer's MLP units kept (Wanda saliency; the same weights removed,
within 1.2%) — exported once, then measured by the local agent's genai runtime in ROUNDS
rounds, each round every folder once in turn (a 128-token prompt, 64 greedy tokens, 3 timed
generations), so that a change of load falls on all three alike. Reported: the median over
rounds of each folder's decode tokens/s and TTFT, and the ratios of the pruned to the unpruned
within each round (median, min, max). No healing. Timings of a shared 2-core x86 VM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table  # noqa: E402
from llm_recipes import cache_dir, measure, recipes  # noqa: E402

import torch  # noqa: E402

from hwnas.config.text import LanguageDataSpec, TokenBudgets  # noqa: E402
from hwnas.llm.export import export_genai  # noqa: E402
from hwnas.llm.saliency import measure_saliency  # noqa: E402
from hwnas.llm.source import demo_model_folder, load_causal_lm  # noqa: E402
from hwnas.llm.text import language_data  # noqa: E402
from hwnas.remote.local import LocalAgentProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-as", default="llm_depth_width")
    args = parser.parse_args()

    base = load_causal_lm(demo_model_folder(cache_dir() / "models"))
    spec = LanguageDataSpec(tokens=TokenBudgets(calibration=0, saliency=4096, healing=0,
                                                selection=0, evaluation=256))
    saliency = measure_saliency(base.model, torch.from_numpy(
        language_data(spec, base.tokenizer).saliency))
    chosen = [r for r in recipes(base.model, saliency) if r[0].startswith("int4 b32")]
    names = [name for name, _model, _plan in chosen]
    speeds: dict[str, list[float]] = {name: [] for name in names}
    ttft: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    process = LocalAgentProcess()
    process.start()
    try:
        client = process.client("local")
        with tempfile.TemporaryDirectory(prefix="hwnas-depth-width-") as work:
            shas = {}
            for index, (name, model, plan) in enumerate(chosen):
                exported = export_genai(model, base.tokenizer, Path(work) / f"r{index}", plan)
                shas[name] = client.ensure_files(exported.path, "model.onnx")
            for round_index in range(args.rounds):
                for name in names:
                    found = measure(client, shas[name], args.threads, 3)
                    speeds[name].append(found.decode_tokens_per_s)
                    ttft[name].append(found.ttft_ms_p50)
                loads.append(os.getloadavg()[0])
                print(f"round {round_index + 1}: " + ", ".join(
                    f"{name.split(' [')[0]} {speeds[name][-1]:.1f}" for name in names), flush=True)
    finally:
        process.stop()
    unpruned = names[0]
    rows, results = [], []
    for name in names:
        ratios = [s / u for s, u in zip(speeds[name], speeds[unpruned])]
        results.append({"recipe": name, "decode_tokens_per_s_rounds": speeds[name],
                        "ttft_ms_p50_rounds": ttft[name],
                        "decode_tokens_per_s_median": statistics.median(speeds[name]),
                        "ttft_ms_p50_median": statistics.median(ttft[name]),
                        "decode_vs_unpruned_median": statistics.median(ratios),
                        "decode_vs_unpruned_range": [min(ratios), max(ratios)]})
        rows.append([name.split(" [")[0], f"{statistics.median(speeds[name]):.1f}",
                     f"{statistics.median(ttft[name]):.0f}", f"{statistics.median(ratios):.3f}",
                     f"{min(ratios):.3f}-{max(ratios):.3f}"])
    depth, width = names[1], names[2]
    depth_vs_width = [d / w for d, w in zip(speeds[depth], speeds[width])]
    print(table(["recipe", "decode tok/s (median)", "TTFT p50 ms", "vs unpruned (median)",
                 "vs unpruned (range)"], rows))
    print(f"depth / width decode speed, per round: median {statistics.median(depth_vs_width):.3f} "
          f"(range {min(depth_vs_width):.3f}-{max(depth_vs_width):.3f}); 1-min load "
          f"{min(loads):.2f}-{max(loads):.2f}")
    save(args.save_as, {
        "command": " ".join(["benchmarks/llm_depth_width.py", *sys.argv[1:]]),
        "threads": args.threads, "rounds": args.rounds, "healing": "none",
        "recipes": results, "depth_vs_width_rounds": depth_vs_width,
        "depth_vs_width_median": statistics.median(depth_vs_width), "load_1min": loads,
        "note": "x86 CPU timings on a shared 2-core VM, interleaved: not a device latency"})


if __name__ == "__main__":
    main()
