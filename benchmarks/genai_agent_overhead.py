"""Does the agent's genai runtime measure generation as a bare onnxruntime-genai loop does?

    .venv/bin/python benchmarks/genai_agent_overhead.py [--folder GENAI_FOLDER] [--repeats 3]

On one onnxruntime-genai model folder (default: SmolLM2-135M-Instruct int4, built once from
the offline demo's GGUF into the hwnas cache: GGUF -> transformers Llama -> onnxruntime-genai's
model builder), decode tokens/s and TTFT measured (A) through the local agent (runtime genai,
the model shipped as a model of several files) and (B) by a bare generate loop in its own
process with the identical methodology (same prompt ids, warm-up, rounds, greedy, no early
stop), in pairs A B, B A, A B ... (counterbalanced against drift) for 1 and 2 intra-op threads. Ratios agent / bare of the
medians; the goal is agreement within 3%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, save, table  # noqa: E402

from hwnas_agent.protocol import MeasureRequest  # noqa: E402

from hwnas.remote.local import LocalAgentProcess  # noqa: E402

PROMPT, GENERATE, WARMUP = 128, 64, 2

# the bare loop: onnxruntime-genai alone, the agent's methodology written out again
BARE = """
import json, sys, time, numpy as np, onnxruntime_genai as og
folder, threads, rounds, prompt, generate, warmup = sys.argv[1], *map(int, sys.argv[2:7])
config = og.Config(folder)
config.clear_providers()
config.overlay(json.dumps({"model": {"decoder": {"session_options": {
    "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
model = og.Model(config)
meta = json.load(open(folder + "/genai_config.json"))["model"]
special = set()
for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    value = meta.get(key)
    special.update(value if isinstance(value, list) else [value])
vocabulary = np.array([i for i in range(meta["vocab_size"]) if i not in special])
ids = np.random.default_rng(0).choice(vocabulary, size=prompt).astype(np.int32)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=prompt + generate,
                          min_length=prompt + generate, num_beams=1)
ttft, decode = [], []
for index in range(warmup + rounds):
    generator = og.Generator(model, params)
    begin = time.perf_counter_ns()
    generator.append_tokens(ids)
    generator.generate_next_token()
    first = time.perf_counter_ns()
    for _ in range(generate - 1):
        if generator.is_done():
            raise SystemExit("the generation stopped early")
        generator.generate_next_token()
    end = time.perf_counter_ns()
    del generator
    if index >= warmup:
        ttft.append((first - begin) / 1e6)
        decode.append((generate - 1) / ((end - first) / 1e9))
print(json.dumps({"ttft_ms_p50": float(np.median(ttft)),
                  "decode_tokens_per_s": float(np.median(decode))}))
"""


def demo_folder() -> Path:
    """SmolLM2-135M-Instruct int4 as onnxruntime-genai's builder writes it, built once."""
    from hwnas.llm.source import demo_model_folder
    from hwnas.testing.llm import tiny_genai_folder

    cache = Path(os.environ.get("HWNAS_CACHE_DIR", Path.home() / ".cache" / "hwnas"))
    out = cache / "genai" / "smollm2-135m-int4"
    if (out / "genai_config.json").exists():
        return out
    return tiny_genai_folder(demo_model_folder(cache / "models"), out, "int4")


def bare(folder: Path, threads: int, rounds: int) -> dict:
    done = subprocess.run([sys.executable, "-c", BARE, str(folder), str(threads), str(rounds),
                           str(PROMPT), str(GENERATE), str(WARMUP)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def agent(client, sha256: str, threads: int, rounds: int) -> dict:
    request = MeasureRequest.from_dict({
        "model_sha256": sha256, "runtime": "genai", "intra_op_threads": threads,
        "inter_op_threads": 1, "prompt_tokens": PROMPT, "generate_tokens": GENERATE,
        "warmup_iterations": WARMUP, "warmup_seconds": 0.0, "min_iterations": rounds,
        "min_seconds": 0.0, "rounds": 1, "timeout_s": 600.0})
    measurement = client.measure(request)
    return {"ttft_ms_p50": measurement.ttft_ms_p50,
            "decode_tokens_per_s": measurement.decode_tokens_per_s,
            "worker_seconds": measurement.agent_report["worker_seconds"],
            "peak_rss_mb": measurement.peak_memory_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None,
                        help="an onnxruntime-genai model folder (default: SmolLM2-135M int4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="timed generation rounds per run")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    folder = args.folder or demo_folder()
    load_before = os.getloadavg()
    process = LocalAgentProcess()
    process.start()
    runs: dict = {}
    try:
        client = process.client("local")
        sha256 = client.ensure_files(folder, "model.onnx")
        for threads in [int(t) for t in args.threads.split(",")]:
            runs[threads] = {"agent": [], "bare": []}
            for repeat in range(args.repeats):
                # A B, B A, A B ...: a pair's two runs side by side, and a drift of the machine
                # over the pairs (this shared VM's speed doubled within minutes) favours neither
                if repeat % 2 == 0:
                    runs[threads]["agent"].append(agent(client, sha256, threads, args.rounds))
                    runs[threads]["bare"].append(bare(folder, threads, args.rounds))
                else:
                    runs[threads]["bare"].append(bare(folder, threads, args.rounds))
                    runs[threads]["agent"].append(agent(client, sha256, threads, args.rounds))
                print(f"threads {threads} repeat {repeat + 1}: agent "
                      f"{runs[threads]['agent'][-1]['decode_tokens_per_s']:.1f} tok/s, bare "
                      f"{runs[threads]['bare'][-1]['decode_tokens_per_s']:.1f} tok/s", flush=True)
    finally:
        process.stop()
    rows, summary = [], {}
    for threads, pair in runs.items():
        figures = {side: {key: median([r[key] for r in pair[side]])
                          for key in ("ttft_ms_p50", "decode_tokens_per_s")} for side in pair}
        ratios = {key: figures["agent"][key] / figures["bare"][key] for key in figures["bare"]}
        # each agent run against the bare run right after it: drift between pairs cancels
        paired = {key: sorted(a[key] / b[key] for a, b in zip(pair["agent"], pair["bare"]))
                  for key in figures["bare"]}
        summary[str(threads)] = {"agent": figures["agent"], "bare": figures["bare"],
                                 "ratio_agent_over_bare": ratios,
                                 "paired_ratios": paired,
                                 "paired_ratio_median": {k: median(v) for k, v in paired.items()},
                                 "within_3_percent": all(abs(r - 1) <= 0.03 for r in ratios.values())}
        rows.append([str(threads), f"{figures['agent']['decode_tokens_per_s']:.1f}",
                     f"{figures['bare']['decode_tokens_per_s']:.1f}",
                     f"{ratios['decode_tokens_per_s']:.3f}",
                     f"{figures['agent']['ttft_ms_p50']:.1f}", f"{figures['bare']['ttft_ms_p50']:.1f}",
                     f"{ratios['ttft_ms_p50']:.3f}",
                     "%.3f (%.3f-%.3f)" % (median(paired["decode_tokens_per_s"]),
                                           paired["decode_tokens_per_s"][0],
                                           paired["decode_tokens_per_s"][-1])])
    print(table(["threads", "decode tok/s agent", "bare", "ratio", "TTFT ms agent", "bare",
                 "ratio", "decode paired ratios: median (range)"], rows))
    save("genai_agent_overhead", {
        "model_folder": folder.name, "prompt_tokens": PROMPT, "generate_tokens": GENERATE,
        "warmup_rounds": WARMUP, "rounds_per_run": args.rounds, "repeats": args.repeats,
        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "summary": summary, "runs": {str(t): r for t, r in runs.items()}})


if __name__ == "__main__":
    main()
