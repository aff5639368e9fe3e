"""The verbs that run or read a study: search, worker, status, finalize, sensitivity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwnas.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_SPACE,
    FOUND_FROM,
    Command,
    add_torch_device,
    positive_int,
    positive_seconds,
    project_file,
    writable_folder,
)


class SearchCommand(Command):
    name = "search"
    help = "search compressions of a model under budgets measured on a device"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("space", nargs="?", type=Path, default=None,
                            help=f"search space YAML (default: {DEFAULT_SPACE}, {FOUND_FROM})")
        parser.add_argument("--device", type=Path, action="append", default=None,
                            help=f"device profile YAML; repeat it to measure on several devices "
                                 f"in parallel (default: {DEFAULT_DEVICE}, {FOUND_FROM})")
        parser.add_argument("--run-dir", type=Path, default=None,
                            help="where the study, artifacts and report go "
                                 "(default: runs/<space>--<device>)")
        parser.add_argument("--trials", type=positive_int, default=None,
                            help="total completed trials wanted (overrides search.n_trials); "
                                 "running again continues the same study")
        parser.add_argument("--storage", default=None,
                            help="Optuna storage URL of the study (e.g. postgresql://user@host/db "
                                 "for several machines); default: search.storage, else SQLite in "
                                 "the run folder")
        parser.add_argument("--study", default=None,
                            help="the study's name in the storage (default: search.study_name, "
                                 "else <space>--<device>); name an existing one to join it")
        parser.add_argument("--artifact-store", default=None,
                            help="where kept bytes and the parent's weights go: file:///shared/"
                                 "path or s3://bucket/prefix (default: search.artifact_store, "
                                 "else the run folder)")
        parser.add_argument("--fork", action="store_true",
                            help="the configuration changed since the study ran: continue in a "
                                 "new study of the same run folder that keeps the old trials as "
                                 "history where they fit")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_torch_device(parser)

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.search import run_search

        if args.run_dir is not None:
            writable_folder(args.run_dir, "--run-dir")
        space = args.space or project_file(DEFAULT_SPACE, "search space")
        devices = args.device or [project_file(DEFAULT_DEVICE, "--device")]
        outcome = run_search(space, devices, args.run_dir, args.trials,
                             progress=not args.no_progress, fork=args.fork,
                             storage=args.storage, study_name=args.study,
                             artifact_store=args.artifact_store,
                             torch_device=args.torch_device)
        return print_outcome(outcome)


def print_outcome(outcome) -> int:  # type: ignore[no-untyped-def]
    from hwnas.llm.report import is_language_study
    from hwnas.report import Report, text_table, why_nothing_fits

    if is_language_study(outcome.study):
        return print_language_outcome(outcome.study, outcome.run)
    report = Report.of(outcome.study)
    print("\nPareto front (meets every budget):" if report.front else
          f"\nNo trial meets every budget yet ({why_nothing_fits(report)}); all trials:")
    print(text_table(report.front or report.outcomes, report))
    return print_best_and_report(report, outcome.study, outcome.run)


def print_language_outcome(study, run) -> int:  # type: ignore[no-untyped-def]
    from hwnas.llm.report import summary
    from hwnas.pareto import best_feasible, study_directions
    from hwnas.report import write_report
    from hwnas.run import outcomes

    print("\n" + summary(study))
    best = best_feasible(outcomes(study), study_directions(study))
    if best is not None and best.measurement is not None:
        print(f"\nbest feasible: trial {best.number}: next-token accuracy (val) "
              f"{best.accuracy_val:.4f}, decode {best.measurement.decode_tokens_per_s:.1f} "
              f"tokens/s, {best.artifact.size_mb:.1f} MB" if best.artifact else "")
        folder = (study.trials[best.number].user_attrs.get("llm") or {}).get("folder")
        if folder and (run.path / folder).is_dir():
            print(f"its onnxruntime-genai folder: {run.path / folder}")
        else:  # a worker's: in the study's artifact store
            print(f"export it: hwnas export {run.path} --trial {best.number}")
    paths = write_report(study, run.report_dir)
    print(f"report: {paths['html']}")
    return 0


def print_best_and_report(report, study, run) -> int:  # type: ignore[no-untyped-def]
    """The best feasible trial, how to export it, and the report written for the study."""
    from hwnas.remote.check import emulated_what
    from hwnas.report import write_report

    best = report.best
    if best is not None and best.measurement is not None:
        latency = (f"latency not measured ({emulated_what(best.measurement)})"
                   if best.measurement.emulated
                   else f"latency p90 {best.measurement.latency_ms_p90:.3f} ms")
        print(f"\nbest feasible: trial {best.number}: validation accuracy {best.accuracy_val:.4f}, "
              f"test accuracy {best.accuracy_test:.4f}, {latency}")
        print(f"export it: hwnas export {run.path} --trial {best.number}")
    paths = write_report(study, run.report_dir)
    print(f"report: {paths['html']} (plot {paths['plot']})")
    return 0


class WorkerCommand(Command):
    name = "worker"
    help = "join a study on a shared storage and run its trials with this machine's devices"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--storage", required=True,
                            help="the study's storage URL, e.g. postgresql://hwnas@db-host/hwnas")
        parser.add_argument("--study", required=True, help="the study name `hwnas search` printed")
        parser.add_argument("--device", type=Path, action="append", default=None,
                            help=f"this machine's device profile YAML (repeat for several; "
                                 f"default: {DEFAULT_DEVICE}, {FOUND_FROM})")
        parser.add_argument("--run-dir", type=Path, default=None,
                            help="this worker's local folder: log, configs, fetched artifacts "
                                 "(default: runs/<study>--worker)")
        parser.add_argument("--artifact-store", default=None,
                            help="override the study's artifact store location on this machine")
        parser.add_argument("--files-root", type=Path, default=None,
                            help="a language model's study: where the study's relative paths "
                                 "(base_model.causal_lm, dataset.text files) resolve on this "
                                 "machine (default: the folder they resolved against for the "
                                 "study's creator); the files must be the study's, by sha256")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_torch_device(parser)

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.search import run_worker

        outcome = run_worker(args.storage, args.study,
                             args.device or [project_file(DEFAULT_DEVICE, "--device")],
                             args.run_dir, progress=not args.no_progress,
                             artifact_store=args.artifact_store,
                             torch_device=args.torch_device, files_root=args.files_root)
        print(f"worker done: {outcome.trials_run} trials run here; the study "
              f"{outcome.run.study_name} has its trials (see `hwnas status {outcome.run.path}`)")
        return 0


class StatusCommand(Command):
    name = "status"
    help = "progress of a study across workers: trials done, running, by worker and device"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", help="a run folder, or a storage URL (with --study)")
        parser.add_argument("--study", dest="study_name", default=None,
                            help="the study name (needed with a storage URL holding several)")
        parser.add_argument("--json", action="store_true", help="print the status as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report.status import study_status, status_text

        status = study_status(args.study, args.study_name)
        print(json.dumps(status, indent=1, sort_keys=True) if args.json else status_text(status))
        return 0


class FinalizeCommand(Command):
    name = "finalize"
    help = ("fine-tune the best feasible trials of a search to full fidelity (a longer "
            "distillation), measure the new bytes and add them to the study and its report")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--top", type=positive_int, default=1,
                            help="how many of the most accurate feasible trials (default: 1)")
        parser.add_argument("--max-steps", type=positive_int, default=None,
                            help="fine-tuning steps (default: 10 x the search's finetune.max_steps)")
        parser.add_argument("--max-seconds", type=positive_seconds, default=None,
                            help="fine-tuning time limit per model (default: 10 x the search's "
                                 "finetune.max_seconds)")
        parser.add_argument("--again", action="store_true",
                            help="finalize trials that were finalized before once more (default: "
                                 "reuse the earlier finalized trial)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_torch_device(parser)

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report import Report, text_table
        from hwnas.run import RunFolder
        from hwnas.search.finalize import finalize_run

        results = finalize_run(args.study, args.top, args.max_steps, args.max_seconds,
                               args.again, progress=not args.no_progress,
                               torch_device=args.torch_device)
        run = RunFolder.load(args.study)
        study = run.open_study()
        report = Report.of(study)
        print("\nfinalized (each after the trial it finishes):")
        rows = [row for done in results for row in (done.source, done.outcome)]
        print(text_table(rows, report))
        return print_best_and_report(report, study, run)


class SensitivityCommand(Command):
    name = "sensitivity"
    help = ("per-unit sensitivity of a search's base model: each unit alone at each device "
            "precision and a few keep ratios, exported and read on held-out data (kept in the "
            "study; the report draws it as a heatmap)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--samples", type=positive_int, default=None,
                            help="held-out samples each variant is read on (default: "
                                 "search.sensitivity.samples, else 256)")
        parser.add_argument("--keep-ratios", type=float, nargs="+", default=None,
                            metavar="RATIO", help="keep ratios tried on each width stage, each "
                            "below 1 (default: search.sensitivity.keep_ratios, else 0.75 0.5 0.25)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_torch_device(parser)

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.search.sensitivity_run import sensitivity_of_run
        from hwnas.sensitivity import sensitivity_table

        settings = _sensitivity_settings(args)
        found, measured = sensitivity_of_run(args.study, settings, progress=not args.no_progress,
                                             torch_device=args.torch_device)
        print(sensitivity_table(found))
        print("measured now and kept in the study" if measured else
              "kept in the study already: nothing measured")
        return 0


def _sensitivity_settings(args: argparse.Namespace) -> dict:
    """The settings the flags give (each one replaces the space's own; checked with them)."""
    return {k: v for k, v in (("samples", args.samples), ("keep_ratios", args.keep_ratios))
            if v is not None}
