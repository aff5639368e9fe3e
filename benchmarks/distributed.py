"""Several controllers on one PostgreSQL study: trials per hour with 1, 2 and 4 workers, and
kill -9 of a random worker in repeated runs (trials lost, trials recorded twice).

    .venv/bin/python benchmarks/distributed.py [--finetune-seconds 4] [--trials 16]
                                               [--kill-runs 20] [--skip-scaling]
    .venv/bin/python benchmarks/distributed.py --fleet --trials 8 --kill-runs 0 --skip-scaling \
        [--fleet-fixed-finetune --finetune-seconds 4] --save-as distributed_fleet_samplers

``--fleet``: the fleet space (search_spaces/fashion_mnist_fleet.yaml, its real fine-tune) with
``sampler: engine`` and with ``sampler: tpe``, 1 and 2 workers each, side by side in one run:
trials per hour, and the best feasible validation accuracy each reached, at the end and
within the shortest run's wall time.

A private PostgreSQL cluster is started for the run (Debian's postgresql binaries). Every
controller is a real process (`hwnas search` for the first, `hwnas worker` semantics for the
rest) with its own local agent. Two settings of the fine-tune step:

- fixed: the fine-tune is replaced, in these benchmark processes only, by a wait of a fixed
  number of seconds (what a GPU workstation's fine-tune costs, without using this machine's
  CPU), so the ratio between worker counts shows the engine's overhead: database, sampler,
  artifact store, the agents' queues;
- default: the search space's real fine-tune, CPU-bound on this 2-core machine: workers
  compete for the same two cores, so the ratio shows the machine, not the engine.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import median, save, table  # noqa: E402

SPACE = """\
name: dist-bench
base_model:
  builtin: small_cnn
  train: {epochs: 8, batch_size: 64, learning_rate: 0.003}
dataset: {builtin: digits, validation_fraction: 0.15, calibration_samples: 64}
knobs:
  width: {keep_ratios: [0.25, 0.375, 0.5, 0.625, 0.75, 1.0]}
  pruning: {criteria: [l1, saliency], global_ratios: [0.0, 0.1, 0.2, 0.3]}
  precision: {granularity: stage}
finetune: {max_steps: 60, max_seconds: 60, batch_size: 64, learning_rate: 0.003}
budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}
search: {n_trials: %d, seed: 0}
"""
DEVICE = """\
name: %s
pool: bench-cpu   # the same kind of device for every worker: one pool, one figure per candidate
connection: {kind: local}
runtime: {execution_providers: [CPUExecutionProvider], intra_op_threads: 1}
precisions: [fp32, int8]
measurement: {warmup_iterations: 5, warmup_seconds: 0.05, min_iterations: 50, min_seconds: 0.2,
              rounds: 2}
"""
STUDY = "dist-bench--dev0"
FLEET = Path(__file__).resolve().parents[1] / "search_spaces" / "fashion_mnist_fleet.yaml"


def controller(args: list[str]) -> int:
    """One benchmark controller process: `primary STORAGE STORE SPACE DEVICE RUN TRIALS` or
    `worker STORAGE STORE DEVICE RUN`, with the fine-tune replaced by a wait if asked."""
    seconds = float(os.environ.get("HWNAS_BENCH_FINETUNE_S", "0"))
    if seconds > 0:
        import hwnas.search.candidates as candidates

        def fixed_cost_finetune(*_: object, **__: object) -> dict[str, float]:
            time.sleep(seconds)  # a GPU elsewhere would be busy; this CPU is not
            return {"steps": 0, "seconds": seconds, "final_loss": None}

        candidates.finetune = fixed_cost_finetune  # type: ignore[assignment]
    from hwnas.search import run_search, run_worker

    def quiet(_: str) -> None:
        pass

    if args[0] == "primary":
        _, storage, store, space, device, run, trials = args
        run_search(Path(space), [Path(device)], Path(run), int(trials), progress=False, log=quiet,
                   storage=storage, artifact_store=store)
    else:
        _, storage, store, device, run, study = args
        run_worker(storage, study, [Path(device)], Path(run), progress=False, log=quiet,
                   artifact_store=store)
    return 0


def spawn(role_args: list[str], finetune_s: float, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HWNAS_BENCH_FINETUNE_S=str(finetune_s), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, __file__, "--controller", *role_args], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def study_of(url: str, name: str = STUDY):  # type: ignore[no-untyped-def]
    import optuna

    from hwnas.storage import make_storage

    try:
        return optuna.load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        return None


def one_study(cluster, folder: Path, workers: int, trials: int, finetune_s: float,
              kill: bool = False, rng: random.Random | None = None,
              space: str | None = None, study_name: str = STUDY,
              device: str | None = None) -> dict:
    """Primary + (workers - 1) joining workers on a fresh database; returns the figures."""
    from hwnas.records import StudyRecord, TrialStage
    from hwnas.run import outcomes

    url = cluster.createdb(f"b{time.time_ns() % 10 ** 12}")
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(space or SPACE % trials)
    devices = []
    for index in range(workers):
        path = folder / f"dev{index}.yaml"
        path.write_text((device or DEVICE) % f"dev{index}")
        devices.append(path)
    store = f"file://{folder / 'store'}"
    primary = spawn(["primary", url, store, str(folder / "space.yaml"), str(devices[0]),
                     str(folder / "c0"), str(trials)], finetune_s, folder / "c0.log")
    while True:  # the parent is fixed once: then the clock starts for everyone
        study = study_of(url, study_name)
        if study is not None and StudyRecord.from_study(study).parent_weights_sha256:
            break
        if primary.poll() is not None:
            raise RuntimeError((folder / "c0.log").read_text()[-3000:])
        time.sleep(0.3)
    started = time.monotonic()
    processes = [primary] + [spawn(["worker", url, store, str(devices[i]), str(folder / f"c{i}"),
                                    study_name], finetune_s, folder / f"c{i}.log")
                             for i in range(1, workers)]
    killed = None
    if kill:
        assert rng is not None
        time.sleep(rng.uniform(3.0, 20.0))
        victim = rng.randrange(1, workers)
        if processes[victim].poll() is None:
            os.killpg(processes[victim].pid, signal.SIGKILL)
            killed = victim
    for process in processes:
        process.wait(timeout=3600)
    seconds = time.monotonic() - started
    study = study_of(url, study_name)
    found = outcomes(study)
    clock = time.time() - seconds  # the wall clock when the parent was fixed
    # best feasible validation accuracy, with the seconds after the start it was reached
    reached = sorted((t.datetime_complete.timestamp() - clock, o.values[0])
                     for t, o in zip(study.get_trials(), found)
                     if o.feasible and o.values and t.datetime_complete is not None)
    done = [o for o in found if o.stage in (TrialStage.EVALUATED, TrialStage.REJECTED)]
    measured = [o.candidate for o in done if o.copied_from is None]
    leftovers = subprocess.run(["pgrep", "-f", f"hwnas_agent serve.*{folder}"],
                               capture_output=True, text=True).stdout.split()
    return {"workers": workers, "trials_done": len(done), "seconds": seconds,
            "trials_per_hour": len(done) / seconds * 3600, "killed_worker": killed,
            "trials_lost": max(0, trials - len(done)),
            "recorded_twice": len(measured) - len(set(measured)),
            # trials that copied another controller's trial of the same candidate (a twin):
            # no new candidate for the study
            "copies": sum(o.copied_from is not None for o in done),
            "left_running": sum(o.stage in (TrialStage.RUNNING, TrialStage.WAITING) for o in found),
            "orphaned_processes": len(leftovers),
            "feasible_reached": reached,
            "exit_codes": [p.returncode for p in processes]}


def best_within(row: dict, seconds: float) -> float | None:
    found = [accuracy for at, accuracy in row["feasible_reached"] if at <= seconds]
    return max(found) if found else None


def fleet(cluster, root: Path, trials: int, finetune_s: float,
          samplers: tuple[str, ...] = ("engine", "tpe"), workers_each: tuple[int, ...] = (1, 2)
          ) -> list[dict]:
    """The fleet space, engine and TPE, 1 and 2 workers; its real fine-tune, or (finetune_s
    > 0) a fixed wait in its place (the accuracies are then those of the pruned, quantized
    models without fine-tuning: comparable between samplers, not a search's result)."""
    text = FLEET.read_text()
    # this machine's default profile (the fleet space's budgets are set for it), one pool
    local = (FLEET.parents[1] / "device_profiles" / "local.yaml").read_text()
    device = local.replace("name: local\n", "name: %s\npool: bench-cpu\n", 1)
    assert "%s" in device
    rows = []
    for sampler in samplers:
        space = text.replace("n_trials: 16", f"n_trials: {trials}").replace(
            "sampler: engine", f"sampler: {sampler}")
        for workers in workers_each:
            row = one_study(cluster, root / f"fleet-{sampler}-{workers}", workers, trials, finetune_s,
                            space=space, study_name="fashion-mnist-cnn-fleet--dev0",
                            device=device)
            row["sampler"] = sampler
            rows.append(row)
            print(f"  fleet {sampler}, {workers} workers: {row['trials_done']} trials in "
                  f"{row['seconds']:.0f} s, best feasible {best_within(row, 1e9)}", flush=True)
    shortest = min(r["seconds"] for r in rows)
    for row in rows:
        row["best_feasible"] = best_within(row, 1e9)
        row["best_feasible_within_shortest"] = best_within(row, shortest)
    print(table(["sampler", "workers", "trials", "s", "trials/h", "best feasible",
                 f"best within {shortest:.0f} s"],
                [[r["sampler"], r["workers"], r["trials_done"], f"{r['seconds']:.0f}",
                  f"{r['trials_per_hour']:.0f}", r["best_feasible"],
                  r["best_feasible_within_shortest"]] for r in rows]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--controller", nargs=argparse.REMAINDER)
    parser.add_argument("--finetune-seconds", type=float, default=4.0)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--kill-runs", type=int, default=20)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--fleet", action="store_true",
                        help="the fleet space: engine vs tpe, 1 and 2 workers")
    parser.add_argument("--fleet-fixed-finetune", action="store_true",
                        help="--fleet with --finetune-seconds of waiting in place of fine-tuning")
    parser.add_argument("--fleet-samplers", default="engine,tpe")
    parser.add_argument("--fleet-workers", default="1,2")
    parser.add_argument("--save-as", default="distributed", help="results/NAME.json")
    args = parser.parse_args()
    if args.controller:
        return controller(args.controller)

    from hwnas.testing.postgres import PostgresCluster

    rng = random.Random(0)
    figures: dict = {"fixed_finetune_seconds": args.finetune_seconds, "trials": args.trials}
    with tempfile.TemporaryDirectory(prefix="hwnas-dist-") as tmp, PostgresCluster() as cluster:
        root = Path(tmp)
        os.environ.setdefault("HWNAS_CACHE_DIR", str(root / "cache"))
        if not args.skip_scaling:
            for setting, finetune_s in (("fixed", args.finetune_seconds), ("default", 0.0)):
                rows = []
                for workers in (1, 2, 4):
                    result = one_study(cluster, root / f"{setting}-{workers}", workers,
                                       args.trials, finetune_s)
                    rows.append(result)
                    print(f"  {setting} fine-tune, {workers} workers: {result['trials_done']} "
                          f"trials in {result['seconds']:.0f} s", flush=True)
                base = rows[0]["trials_per_hour"]
                for row in rows:
                    row["speedup"] = row["trials_per_hour"] / base
                    row["efficiency"] = row["speedup"] / row["workers"]
                figures[f"scaling_{setting}"] = rows
                print(table(["workers", "trials", "s", "trials/h", "speed-up", "efficiency"],
                            [[r["workers"], r["trials_done"], f"{r['seconds']:.0f}",
                              f"{r['trials_per_hour']:.0f}", f"{r['speedup']:.2f}",
                              f"{r['efficiency']:.2f}"] for r in rows]))
        if args.fleet:
            finetune_s = args.finetune_seconds if args.fleet_fixed_finetune else 0.0
            figures["fleet"] = fleet(cluster, root, args.trials, finetune_s,
                                     tuple(args.fleet_samplers.split(",")),
                                     tuple(int(w) for w in args.fleet_workers.split(",")))
            figures["fleet_finetune"] = f"fixed {finetune_s} s wait" if finetune_s else "real"
        kills = []
        for run in range(args.kill_runs):
            result = one_study(cluster, root / f"kill-{run}", 3, 6, 2.0, kill=True, rng=rng)
            kills.append(result)
            print(f"  kill run {run}: worker {result['killed_worker']} killed; lost "
                  f"{result['trials_lost']}, twice {result['recorded_twice']}, left running "
                  f"{result['left_running']}, orphans {result['orphaned_processes']}", flush=True)
        figures["kill_runs"] = kills
        figures["kill_summary"] = {} if not kills else {
            "runs": len(kills), "killed": sum(k["killed_worker"] is not None for k in kills),
            "trials_lost": sum(k["trials_lost"] for k in kills),
            "recorded_twice": sum(k["recorded_twice"] for k in kills),
            "left_running": sum(k["left_running"] for k in kills),
            "orphaned_processes": sum(k["orphaned_processes"] for k in kills),
            "median_seconds": median([k["seconds"] for k in kills])}
        print(figures["kill_summary"])
    save(args.save_as, {"command": " ".join(["benchmarks/distributed.py", *sys.argv[1:]]),
                         **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
