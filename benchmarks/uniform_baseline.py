"""The default search against the obvious alternative: the best feasible uniform model.

    .venv/bin/python benchmarks/uniform_baseline.py [--seeds 5] [--first-seed 0] [--trials N] [--space YAML]
        [--device YAML] [--samplers tpe,engine] [--budget NAME=VALUE ...] [--json NAME]

For each seed, side by side in one run on the same device (the local agent) and budgets:

- the default search with today's policy (Optuna TPE, budgets as constraints, latency
  screened before fine-tuning): `search.sampler: tpe`;
- the default search with the search engine's policy (`search.sampler: engine`: the same
  engine the NAS-Bench-201 replay measures, with the frontier acquisition for compression:
  uniform ladders first, then budget moved between stages and precisions);
- the best feasible uniform model: the same keep ratio in every stage on the fine grid of the
  space's width knob (every 1/16 from 0.125 to 1), L1 magnitude, no global pruning, one
  precision for the whole model, for every precision of the device. Each goes through what a
  search trial does with the same rules and the same fine-tuning: prune, export, measure;
  over a budget -> rejected before fine-tuning; else fine-tune, export, accuracy of the
  exported bytes, measure the deployed bytes, budgets. Per precision the keeps are tried
  largest first, and after the largest one that is feasible as deployed, smaller ones are
  not fine-tuned (a uniform model with fewer channels of the same precision is less
  accurate; one that passes screening but fails as deployed does not stop the sweep).

Every model is picked on validation accuracy, as the search picks; test accuracy is
compared. "At equal wall time": each search's best feasible trial completed within the
uniform sweep's own wall time (a search's wall time includes its set-up and agent start; the
sweep's starts once its agent is up; the base model is trained before anything is timed).
A compression is fine-tuned with the seed drawn from the compression itself
(`Candidate.finetune_seed`), in the sweep as in the searches: the same model scores the same.

"Measured again side by side": a latency measured once near its budget passes or fails on
noise, and the method that measures more candidates once (the sweep measures ~40 rungs) gets
more lucky draws. After each seed, the RECHECK_TOP most accurate feasible models of every
method are measured RECHECK_ROUNDS more times, interleaved on the same agent, and each is
feasible only if its median measurement meets the budgets; each method's best is then the most
accurate of its picks that still is. Both readings are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agents"))

from _common import save, table  # noqa: E402

from hwnas.budgets import breaks_a_budget, constraint_values  # noqa: E402
from hwnas.compress.finetune import finetune  # noqa: E402
from hwnas.evaluate import onnx_split_accuracy  # noqa: E402
from hwnas.models import output_channels  # noqa: E402
from hwnas.records import Artifact, Candidate, TrialOutcome  # noqa: E402
from hwnas.run import RunFolder  # noqa: E402
from hwnas.search import open_pool, prepare, run_search, trial_context  # noqa: E402
from hwnas.search.candidates import CandidateBuilder, Timings  # noqa: E402
from hwnas.search.measuring import DeviceLease, TrialMeasurer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GRID = [round(0.125 + i / 16, 10) for i in range(15)]  # 0.125 ... 1.0
FEASIBLE_PER_PRECISION = 1
# after each seed, the best feasible models of every method are measured again side by side
RECHECK_TOP = 3  # per method, by validation accuracy
RECHECK_ROUNDS = 5  # interleaved: A B C ... A B C ...; the median measurement decides


@dataclasses.dataclass
class UniformRow:
    keep: float
    precision: str
    stage: str  # evaluated | rejected_before_finetune | same model as keep K
    latency_ms_p90: float | None = None
    size_mb: float | None = None
    accuracy_val: float | None = None
    accuracy_test: float | None = None
    feasible: bool = False
    finished_at_s: float = 0.0  # since the sweep started
    artifact_path: str | None = None  # the deployed bytes (evaluated rows)


def uniform_sweep(space_path: Path, device_path: Path, seed: int, work: Path) -> tuple[list[UniformRow], float]:
    prepared = prepare(space_path, device_path, log=lambda _line: None)
    budgets, space = prepared.budgets, prepared.space
    rows: list[UniformRow] = []
    with open_pool(prepared.devices) as pool:
        builder = CandidateBuilder(trial_context(prepared, pool, RunFolder(work, "", "uniform")))
        measurer = TrialMeasurer(DeviceLease(pool), Timings())
        started = time.perf_counter()
        for precision in prepared.shape.precisions:
            built: dict[tuple, UniformRow] = {}
            feasible = 0
            for index, keep in enumerate(sorted(GRID, reverse=True)):
                if feasible >= FEASIBLE_PER_PRECISION:
                    break
                candidate = Candidate.build({s: keep for s in prepared.shape.stages}, "l1", 0.0,
                                            {u: precision for u in prepared.shape.precision_units})
                pruned, _exported, screen = builder.screen_copy(candidate, work, Timings())
                channels = tuple(sorted(output_channels(pruned.module).items()))
                if channels in built:  # rounds to the same channel counts: the same model
                    rows.append(dataclasses.replace(
                        built[channels], keep=keep, stage=f"same model as keep {built[channels].keep:g}",
                        feasible=False, finished_at_s=time.perf_counter() - started))
                    continue
                screened = measurer.measure(screen)
                row = UniformRow(keep, precision, "rejected_before_finetune",
                                 screened.latency_ms_p90, screen.size_mb)
                if not breaks_a_budget(constraint_values(budgets, screened, screen)):
                    model = pruned.module
                    finetune(model, prepared.base.module, prepared.task, space.finetune,
                             seed=candidate.finetune_seed(seed))  # as the search with seed `seed` does
                    artifact = builder.export(model, candidate, work / f"uniform-{keep:g}-{precision}.onnx")
                    deployed = measurer.measure(artifact)
                    row = dataclasses.replace(
                        row, stage="evaluated", latency_ms_p90=deployed.latency_ms_p90,
                        artifact_path=artifact.path,
                        size_mb=artifact.size_mb,
                        accuracy_val=onnx_split_accuracy(artifact, prepared.task.validation),
                        accuracy_test=onnx_split_accuracy(artifact, prepared.task.test),
                        feasible=not breaks_a_budget(constraint_values(budgets, deployed, artifact)))
                    feasible += row.feasible
                row.finished_at_s = time.perf_counter() - started
                built[channels] = row
                rows.append(row)
                acc = "-" if row.accuracy_test is None else f"{row.accuracy_test:.4f}"
                print(f"    uniform keep {keep:g} {precision}: {row.stage}, p90 "
                      f"{row.latency_ms_p90:.4f} ms, {row.size_mb:.3f} MB, test {acc}"
                      f"{' (feasible)' if row.feasible else ''}", flush=True)
        return rows, time.perf_counter() - started


def best_uniform(rows: list[UniformRow]) -> UniformRow | None:
    return max((r for r in rows if r.feasible and r.stage == "evaluated"),
               key=lambda r: r.accuracy_val or 0.0, default=None)


def write_variant(space_path: Path, path: Path, section: str, values: dict[str, Any]) -> Path:
    """``space_path`` with ``values`` set in its ``section``, written to ``path``."""
    document = yaml.safe_load(space_path.read_text())
    document.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if sep and name:
            return name, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--budget {text!r}: expected NAME=NUMBER, e.g. model_size_mb=0.05")


def search(space_path: Path, device_path: Path, sampler: str, seed: int, trials: int,
           work: Path) -> dict[str, Any]:
    variant = write_variant(space_path, work / f"space-{sampler}-{seed}.yaml", "search",
                            dict(sampler=sampler, seed=seed, n_trials=trials))
    started = time.time()
    outcome = run_search(variant, device_path, work / f"run-{sampler}-{seed}", progress=False,
                         log=lambda _line: None)
    wall = time.time() - started
    run = RunFolder.load(work / f"run-{sampler}-{seed}")
    trials_done = []
    trials = outcome.study.get_trials(deepcopy=False)
    found_all = [TrialOutcome.from_trial(t) for t in trials]
    top = sorted((f for f in found_all if f.feasible), key=lambda f: -(f.accuracy_val or 0.0))
    paths = {f.number: run.kept_artifact(f, outcome.study).path for f in top[:RECHECK_TOP]}
    for trial, found in zip(trials, found_all):
        if trial.datetime_complete is None:
            continue
        trials_done.append({"artifact_path": paths.get(trial.number), "number": trial.number,
                            "stage": str(found.stage),
                            "feasible": found.feasible, "accuracy_val": found.accuracy_val,
                            "accuracy_test": found.accuracy_test,
                            "latency_ms_p90": found.measurement.latency_ms_p90
                            if found.measurement else None,
                            "candidate": found.summary(),
                            "finished_at_s": trial.datetime_complete.timestamp() - started})
    return {"sampler": sampler, "seed": seed, "wall_s": wall, "trials": trials_done,
            "evaluated": sum(t["stage"] == "evaluated" for t in trials_done)}


def recheck(space_path: Path, device_path: Path, picks: list[dict[str, Any]]) -> None:
    """Measure every pick again, RECHECK_ROUNDS times, interleaved on the same device, and
    decide its budgets on its median measurement (written into each pick as "recheck"). A
    single measurement near the budget passes or fails on noise; the method that measured
    more candidates once has more lucky draws, so each pick is decided the same way here."""
    prepared = prepare(space_path, device_path, log=lambda _line: None)
    artifacts = [Artifact.from_file(p["artifact_path"], {}, 0) for p in picks]
    taken: list[list] = [[] for _ in picks]
    with open_pool(prepared.devices) as pool:
        measurer = TrialMeasurer(DeviceLease(pool), Timings())
        for _round in range(RECHECK_ROUNDS):
            for index, artifact in enumerate(artifacts):
                taken[index].append(measurer.measure(artifact))
    for pick, artifact, measurements in zip(picks, artifacts, taken):
        middle = sorted(measurements, key=lambda m: m.latency_ms_p90)[len(measurements) // 2]
        pick["recheck"] = {
            "latency_ms_p90": [m.latency_ms_p90 for m in measurements],
            "median_latency_ms_p90": middle.latency_ms_p90,
            "feasible": not breaks_a_budget(constraint_values(prepared.budgets, middle, artifact))}


def rechecked_best(picks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate (validation) of a method's picks that meets the budgets when
    measured again."""
    return next((p for p in picks if p["recheck"]["feasible"]), None)


def top_picks(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    feasible = [f for f in found if f["feasible"] and f.get("artifact_path")]
    return sorted(feasible, key=lambda f: -(f["accuracy_val"] or 0.0))[:RECHECK_TOP]


def best_within(run: dict[str, Any], seconds: float | None = None) -> dict[str, Any] | None:
    found = [t for t in run["trials"] if t["feasible"] and
             (seconds is None or t["finished_at_s"] <= seconds)]
    return max(found, key=lambda t: t["accuracy_val"], default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST .. FIRST+SEEDS-1 (more seeds of an earlier run)")
    parser.add_argument("--trials", type=int, default=None, help="default: the space's n_trials")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces/fashion_mnist.yaml")
    parser.add_argument("--device", type=Path, default=ROOT / "device_profiles/local.yaml")
    parser.add_argument("--samplers", default="tpe,engine",
                        help="the search policies run beside the uniform sweep")
    parser.add_argument("--budget", type=budget, action="append", default=[],
                        help="NAME=VALUE: the space's budget NAME set to VALUE (repeatable), "
                             "e.g. model_size_mb=0.05")
    parser.add_argument("--json", default="uniform_baseline")
    args = parser.parse_args()
    samplers = tuple(args.samplers.split(","))
    trials = args.trials or yaml.safe_load(args.space.read_text())["search"]["n_trials"]
    seeds = []
    with tempfile.TemporaryDirectory(prefix="hwnas-uniform-") as tmp:
        work = Path(tmp)
        if args.budget:
            args.space = write_variant(args.space, work / args.space.name, "budgets", dict(args.budget))
        # the base model is trained (or loaded from the cache) here, so that no timed run pays it
        prepare(args.space, args.device, log=lambda _line: None)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            print(f"seed {seed}", flush=True)
            runs = {sampler: search(args.space, args.device, sampler, seed, trials, work)
                    for sampler in samplers}
            rows, uniform_wall = uniform_sweep(args.space, args.device, seed, work / f"uniform-{seed}")
            uniform = best_uniform(rows)
            entry: dict[str, Any] = {"seed": seed, "uniform_wall_s": uniform_wall,
                                     "uniform_best": dataclasses.asdict(uniform) if uniform else None,
                                     "uniform_rows": [dataclasses.asdict(r) for r in rows]}
            for sampler, run in runs.items():
                final, timed = best_within(run), best_within(run, uniform_wall)
                entry[sampler] = run | {
                    "best": final, "best_within_uniform_wall": timed,
                    "beats_uniform": bool(final and uniform and
                                          final["accuracy_test"] > uniform.accuracy_test),
                    "beats_uniform_within_its_wall": bool(timed and uniform and
                                                          timed["accuracy_test"] > uniform.accuracy_test)}
            picks = {"uniform": top_picks(entry["uniform_rows"])} | {
                sampler: top_picks(entry[sampler]["trials"]) for sampler in runs}
            recheck(args.space, args.device, [p for found in picks.values() for p in found])
            rechecked = {method: rechecked_best(found) for method, found in picks.items()}
            entry["rechecked"] = {method: None if best is None else {
                key: best.get(key) for key in ("accuracy_val", "accuracy_test", "recheck",
                                               "candidate", "precision", "keep")}
                for method, best in rechecked.items()}
            uniform_again = rechecked["uniform"]
            for sampler in runs:
                mine = rechecked[sampler]
                entry[sampler]["beats_uniform_rechecked"] = bool(
                    mine and (uniform_again is None or
                              mine["accuracy_test"] > uniform_again["accuracy_test"]))
            seeds.append(entry)
            save(args.json, {"command": "benchmarks/uniform_baseline.py " + " ".join(sys.argv[1:]),
                             "trials": trials, "grid": GRID, "partial": True, "seeds": seeds})
            print(f"  uniform best {uniform.precision if uniform else '-'} keep "
                  f"{uniform.keep if uniform else '-'}: test "
                  f"{uniform.accuracy_test if uniform else float('nan'):.4f} ({uniform_wall:.0f} s); "
                  + "; ".join(f"{s}: test {(entry[s]['best'] or {}).get('accuracy_test', float('nan')):.4f}"
                              f" ({entry[s]['wall_s']:.0f} s)" for s in runs), flush=True)
            print("  measured again side by side: " + "; ".join(
                f"{method} {'-' if best is None else format(best['accuracy_test'], '.4f')}"
                f"{'' if best is None else ' (p90 ' + format(best['recheck']['median_latency_ms_p90'], '.4f') + ')'}"
                for method, best in rechecked.items()), flush=True)

    def acc(found: dict | None) -> str:
        return "-" if not found else f"{found['accuracy_test']:.4f}"

    print()
    print(table(["seed", "uniform best (val-picked)", "uniform test", "uniform s"] +
                [f"{s} {column}" for s in samplers for column in ("test", "s", "@uniform s")],
                [[str(e["seed"]),
                  f"{e['uniform_best']['precision']} keep {e['uniform_best']['keep']:g}"
                  if e["uniform_best"] else "-",
                  f"{e['uniform_best']['accuracy_test']:.4f}" if e["uniform_best"] else "-",
                  f"{e['uniform_wall_s']:.0f}"] +
                 [cell for s in samplers for cell in
                  (acc(e[s]["best"]), f"{e[s]['wall_s']:.0f}",
                   acc(e[s]["best_within_uniform_wall"]))] for e in seeds]))
    summary = {}
    for sampler in samplers:
        margins = [e[sampler]["best"]["accuracy_test"] - e["uniform_best"]["accuracy_test"]
                   for e in seeds if e[sampler]["best"] and e["uniform_best"]]
        summary[sampler] = {
            "seeds_beating_uniform": sum(e[sampler]["beats_uniform"] for e in seeds),
            "seeds_at_least_uniform": sum(
                bool(e[sampler]["best"] and e["uniform_best"] and e[sampler]["best"]["accuracy_test"]
                     >= e["uniform_best"]["accuracy_test"]) for e in seeds),
            "seeds_beating_uniform_within_its_wall_time":
                sum(e[sampler]["beats_uniform_within_its_wall"] for e in seeds),
            "median_margin_test_accuracy": statistics.median(margins) if margins else None,
            "median_wall_s": statistics.median(e[sampler]["wall_s"] for e in seeds),
            "median_evaluated": statistics.median(e[sampler]["evaluated"] for e in seeds),
            "seeds_beating_uniform_rechecked":
                sum(e[sampler]["beats_uniform_rechecked"] for e in seeds)}
        print(f"{sampler}: beats the best feasible uniform model on "
              f"{summary[sampler]['seeds_beating_uniform']}/{len(seeds)} seeds after {trials} trials, "
              f"{summary[sampler]['seeds_beating_uniform_within_its_wall_time']}/{len(seeds)} within the "
              f"uniform sweep's wall time; median margin {summary[sampler]['median_margin_test_accuracy']}, "
              f"median wall {summary[sampler]['median_wall_s']:.0f} s; "
              f"{summary[sampler]['seeds_beating_uniform_rechecked']}/{len(seeds)} when every "
              f"method's picks are measured again side by side")
    summary["uniform_median_wall_s"] = statistics.median(e["uniform_wall_s"] for e in seeds)
    save(args.json, {"command": "benchmarks/uniform_baseline.py " + " ".join(sys.argv[1:]),
                     "trials": trials, "grid": GRID, "summary": summary, "seeds": seeds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
