"""Replay benchmark: search strategies on NAS-Bench-201 cells with real device figures.

Every strategy runs through the same engine (hwnas/search/engine.py) on a real Optuna
study against the replay evaluator; only the policy differs. The true feasible optimum is
known from the tables, so we count accuracy evaluations until the best-so-far feasible
accuracy is within 0.3 points of it (capped), and the regret after 25/50/100 evaluations.
Hardware look-ups are counted separately. A strategy never sees an accuracy it did not pay
an evaluation for; proxies come from the real architectures (benchmarks/nb201_proxies.py).
The tables are in the repository (benchmarks/data/hw-nas-bench, CIFAR-10 by default).

    .venv/bin/python benchmarks/search_replay.py \\
        --metric raspi4_latency --budget-quantile 0.1 --seeds 30 --json results/x.json
"""

from __future__ import annotations

import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: threads only contend
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

from hwnas.bench.cells import load_cell_space  # noqa: E402
from hwnas.bench.nb201 import PROXY_IMAGES_HOW  # noqa: E402
from hwnas.bench.replay import (ReplayEvaluator, ReplayTable, common_features,  # noqa: E402
                                load_proxies)
from hwnas.data.fashion_mnist import DEBIAN_DIR, idx_files  # noqa: E402
from hwnas.errors import HwnasError  # noqa: E402
from hwnas.search.engine import Evaluation, Policy, SearchEngine  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "hw-nas-bench"  # HW-NAS-Bench x NAS-Bench-201 (MIT): see its README
WITHIN = 0.3  # accuracy points from the true feasible optimum
REGRET_AT = (25, 50, 100)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclasses.dataclass(frozen=True)
class Strategy:
    policy: Policy
    sampler: Callable[[int], optuna.samplers.BaseSampler]
    what: str


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed)


def strategies(cap: int) -> dict[str, Strategy]:
    sampler = Policy(acquisition="sampler", predictor=False, use_proxies=False,
                     max_evaluations=cap)
    model = Policy(acquisition="model", max_evaluations=cap)
    return {
        "hwnas": Strategy(model, _random, "engine default: GP over params + proxies, EI x "
                          "P(feasible), hardware first, figure predictor"),
        "tpe": Strategy(dataclasses.replace(sampler, screening=False), _tpe,
                        "plain Optuna TPE, budgets as constraints, every trial evaluated"),
        "random": Strategy(dataclasses.replace(sampler, screening=False), _random,
                           "random, every trial evaluated"),
        "hardware_first_random": Strategy(sampler, _random, "random, hardware screened first"),
        # what makes it fast: each idea on or off
        "hardware_first_tpe": Strategy(sampler, _tpe, "TPE with constraints, screened first "
                                       "(today's compression search)"),
        "hardware_first_gp": Strategy(sampler, _gp, "Optuna GPSampler with constraints, "
                                      "screened first"),
        "hwnas_no_proxies": Strategy(dataclasses.replace(model, use_proxies=False), _random,
                                     "hwnas without zero-cost proxies"),
        "hwnas_no_predictor": Strategy(dataclasses.replace(model, predictor=False,
                                                           use_proxies=False), _random,
                                       "hwnas without the figure predictor (nor proxies, "
                                       "which it gates): compare with hwnas_no_proxies"),
    }


CACHE: dict = {}  # params -> (candidate, encoding): the same for every run of one space


def run_one(strategy: Strategy, evaluator: ReplayEvaluator, seed: int, optimum: float,
            feasible: dict[tuple[int, ...], float]) -> dict[str, Any]:
    study = optuna.create_study(direction="maximize", sampler=strategy.sampler(seed))
    engine = SearchEngine(evaluator, study, strategy.policy, seed=seed, candidate_cache=CACHE)

    def done(evaluations: tuple[Evaluation, ...]) -> bool:
        best = max((e.accuracy for e in evaluations if e.candidate.ops in feasible), default=None)
        return len(evaluations) >= max(REGRET_AT) and best is not None and \
            best >= optimum - WITHIN

    started = time.perf_counter()
    result = engine.run(stop_when=done)
    best, curve = -np.inf, []
    for evaluation in result.evaluations:  # best-so-far feasible by the table's truth
        if evaluation.candidate.ops in feasible:
            best = max(best, evaluation.accuracy)
        curve.append(best)
    reached = next((i + 1 for i, b in enumerate(curve) if b >= optimum - WITHIN), None)

    def regret(n: int) -> float:
        # no feasible candidate evaluated yet: nothing usable, the whole optimum is lost
        value = curve[min(n, len(curve)) - 1] if curve else -np.inf
        return float(optimum - value) if np.isfinite(value) else float(optimum)

    return {"evaluations_to_target": reached, "evaluations": len(result.evaluations),
            "infeasible_evaluations": sum(e.candidate.ops not in feasible
                                          for e in result.evaluations),
            "measurements": result.measurements, "skipped_by_prediction":
            result.skipped_by_prediction, "regret": {str(n): regret(n) for n in REGRET_AT},
            "rank_accuracy": result.rank_accuracy, "seconds": time.perf_counter() - started,
            "trials": len(study.trials)}


_SHARED: dict[str, Any] = {}


def _run_seed(job: tuple[str, int]) -> dict[str, Any]:
    name, seed = job
    s = _SHARED
    evaluator = ReplayEvaluator(s["space"], s["data"], s["budgets"], s["proxies"], seed=seed,
                                proxy_images=s["proxy_images"])
    return run_one(s["strategies"][name], evaluator, seed, s["optimum"], s["feasible"])


def proxy_rank_correlation(proxies: dict, feasible: dict[tuple[int, ...], float]
                           ) -> dict[str, dict[str, float]]:
    """Reporting only (the search never sees this): how each proxy ranks the accuracy of
    the feasible cells, where the search has to choose."""
    from scipy import stats

    names = sorted({name for cell in feasible if cell in proxies for name in proxies[cell]})
    found = {}
    for name in names:  # over the feasible cells that have this proxy in the cache
        cells = [c for c in feasible if name in proxies.get(c, {})]
        if len(cells) >= 3:
            values, accuracy = [proxies[c][name] for c in cells], [feasible[c] for c in cells]
            found[name] = {"spearman": float(stats.spearmanr(values, accuracy)[0]),
                           "kendall": float(stats.kendalltau(values, accuracy)[0]),
                           "cells": len(cells)}
    return found


def summarise(runs: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    counts = [r["evaluations_to_target"] or cap for r in runs]
    q1, median, q3 = np.percentile(counts, [25, 50, 75])
    return {
        "median_evaluations": float(median), "iqr": [float(q1), float(q3)], "cap": cap,
        "capped_runs": sum(r["evaluations_to_target"] is None for r in runs),
        "regret": {str(n): float(np.median([r["regret"][str(n)] for r in runs]))
                   for n in REGRET_AT},
        "median_hardware_measurements": float(np.median([r["measurements"] for r in runs])),
        "median_skipped_by_prediction": float(np.median([r["skipped_by_prediction"]
                                                          for r in runs])),
        "median_infeasible_evaluations": float(np.median([r["infeasible_evaluations"]
                                                           for r in runs])),
        "median_seconds": float(np.median([r["seconds"] for r in runs])),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", type=Path, default=DATA / "nb201_valid_nets.csv")
    parser.add_argument("--hardware", type=Path, default=DATA / "hw_cifar10.csv")
    parser.add_argument("--metric", required=True, action="append",
                        help="hardware column under a budget; repeat for several budgets")
    parser.add_argument("--budget-quantile", required=True, action="append", type=float,
                        help="one per --metric: the budget is this quantile of the column")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--cap", type=int, default=500,
                        help="accuracy evaluations after which a run counts as not reaching "
                             "the target (reported as the cap)")
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "nb201.yaml")
    parser.add_argument("--proxies", type=Path, default=HERE / "nb201_proxies.csv")
    parser.add_argument("--fashion-mnist", type=Path, default=DEBIAN_DIR,
                        help="Fashion-MNIST idx files that score cells missing from --proxies "
                             "(default: the Debian package dataset-fashion-mnist's folder)")
    parser.add_argument("--strategies", nargs="+", default=None,
                        help="subset to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--update", action="store_true",
                        help="keep the other strategies already in --json (same setting only)")
    args = parser.parse_args(argv)
    if len(args.metric) != len(args.budget_quantile):
        parser.error("give one --budget-quantile per --metric")
    if args.cap < max(REGRET_AT):
        parser.error(f"--cap must be at least {max(REGRET_AT)} (regret is read there)")
    try:
        space = load_cell_space(args.space)
        data = ReplayTable.load(args.accuracy, args.hardware, args.metric)
        budgets = [data.budget(m, q) for m, q in zip(args.metric, args.budget_quantile)]
        all_proxies = load_proxies(args.proxies)
        proxies = common_features(all_proxies)
        chosen = strategies(args.cap)
        if any(chosen[name].policy.use_proxies for name in args.strategies or chosen
               if name in chosen):  # checked now, not minutes into a run
            idx_files(args.fashion_mnist, ("train_images", "train_labels"), PROXY_IMAGES_HOW)
    except HwnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    feasible = data.feasible(budgets)
    optimum = max(feasible.values())
    within = sum(a >= optimum - WITHIN for a in feasible.values())
    print(f"budgets: {', '.join(f'{b.figure} <= {b.limit:.4g}' for b in budgets)}; "
          f"{len(feasible)} of {len(data.accuracy)} cells feasible; optimum {optimum:.2f}%, "
          f"{within} cells within {WITHIN} points")
    correlation = proxy_rank_correlation(all_proxies, feasible)
    for name, figures in correlation.items():
        print(f"  proxy {name}: Spearman {figures['spearman']:.3f}, Kendall "
              f"{figures['kendall']:.3f} over the {figures['cells']} feasible cells")
    names = args.strategies or list(chosen)
    unknown = sorted(set(names) - set(chosen))
    if unknown:
        print(f"error: --strategies: unknown {unknown}; allowed: {', '.join(chosen)}",
              file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    rows = []
    _SHARED.update(space=space, data=data, budgets=budgets, proxies=proxies, optimum=optimum,
                   feasible=feasible, strategies=chosen, proxy_images=args.fashion_mnist)
    for name in names:
        jobs = [(name, seed) for seed in range(args.seeds)]
        try:
            if args.jobs > 1:  # fork: the workers inherit the loaded tables
                with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                    runs = pool.map(_run_seed, jobs, chunksize=1)
            else:
                runs = [_run_seed(job) for job in jobs]
        except HwnasError as exc:  # e.g. the images that score an uncached cell went missing
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
        results[name] = summarise(runs, args.cap) | {"what": chosen[name].what}
        s = results[name]
        rows.append([name, f"{s['median_evaluations']:g}", f"{s['iqr'][0]:g}-{s['iqr'][1]:g}",
                     f"{s['capped_runs']}/{args.seeds}",
                     *[f"{s['regret'][str(n)]:.2f}" for n in REGRET_AT],
                     f"{s['median_hardware_measurements']:g}",
                     f"{s['median_seconds']:.1f}"])
        print(f"  {name}: median {s['median_evaluations']:g} evaluations", flush=True)
    print()
    print(table(["strategy", "median evals", "IQR", f"capped ({args.cap})", "regret@25",
                 "regret@50", "regret@100", "hw look-ups", "s/run"], rows))
    payload = {"strategies": results, "machine": machine(),
               "setting": {"accuracy": str(args.accuracy), "hardware": str(args.hardware),
                           "budgets": [dataclasses.asdict(b) for b in budgets],
                           "quantiles": args.budget_quantile, "feasible_cells": len(feasible),
                           "optimum": optimum, "cells_within": within, "within": WITHIN,
                           "seeds": args.seeds, "cap": args.cap, "proxies": str(args.proxies)},
               "proxy_rank_correlation_feasible": correlation}
    if args.update and args.json.exists():
        old = json.loads(args.json.read_text())
        same = {k: old["setting"].get(k) for k in ("budgets", "seeds", "cap")} == \
            {k: payload["setting"][k] for k in ("budgets", "seeds", "cap")}
        if not same:
            print(f"error: --update: {args.json} holds another setting", file=sys.stderr)
            return 2
        payload["strategies"] = {**old["strategies"], **results}
        payload["runs_of"] = {**old.get("runs_of", {}), **{n: payload["machine"] for n in results}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, sort_keys=True))
    print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
