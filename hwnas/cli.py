"""The `hwnas` command: one small command class per verb."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from hwnas import __version__
from hwnas.disk import no_space_left
from hwnas.errors import HwnasError

DEFAULT_SPACE = Path("search_spaces/fashion_mnist.yaml")
DEFAULT_DEVICE = Path("device_profiles/local.yaml")
FOUND_FROM = "found in the current folder or a parent, else in hwnas's own checkout"


def project_file(relative: Path, flag: str) -> Path:
    """A default config file found from the project: the current folder or the nearest parent
    holding it (running from a subfolder), else the checkout hwnas is installed from."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / relative).is_file():
            return folder / relative
    checkout = Path(__file__).resolve().parent.parent / relative
    if checkout.is_file():
        return checkout
    from hwnas.errors import ConfigError

    raise ConfigError(f"no {flag} given and no {relative} found in {here}, its parents or "
                      f"{checkout.parent.parent}; pass {flag} FILE.yaml")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number (1 or more)")
    return value


def writable_folder(path: Path, what: str) -> Path:
    """A folder hwnas will create: refuse one under a file at once, with the file named."""
    from hwnas.errors import ConfigError

    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file, not a folder; choose "
                                  f"another {what}")
            break
    return path


class Command:
    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


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

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.search import run_search

        if args.run_dir is not None:
            writable_folder(args.run_dir, "--run-dir")
        space = args.space or project_file(DEFAULT_SPACE, "search space")
        devices = args.device or [project_file(DEFAULT_DEVICE, "--device")]
        outcome = run_search(space, devices, args.run_dir, args.trials,
                             progress=not args.no_progress, fork=args.fork,
                             storage=args.storage, study_name=args.study,
                             artifact_store=args.artifact_store)
        return print_outcome(outcome)


def print_outcome(outcome) -> int:  # type: ignore[no-untyped-def]
    from hwnas.report import Report, text_table, why_nothing_fits

    report = Report.of(outcome.study)
    print("\nPareto front (meets every budget):" if report.front else
          f"\nNo trial meets every budget yet ({why_nothing_fits(report)}); all trials:")
    print(text_table(report.front or report.outcomes, report))
    return print_best_and_report(report, outcome.study, outcome.run)


def print_best_and_report(report, study, run) -> int:  # type: ignore[no-untyped-def]
    """The best feasible trial, how to export it, and the report written for the study."""
    from hwnas.report import write_report

    best = report.best
    if best is not None and best.measurement is not None:
        latency = ("latency not measured (simulated accelerator)" if best.measurement.emulated
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
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.search import run_worker

        outcome = run_worker(args.storage, args.study,
                             args.device or [project_file(DEFAULT_DEVICE, "--device")],
                             args.run_dir, progress=not args.no_progress,
                             artifact_store=args.artifact_store)
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


class ProfileCommand(Command):
    name = "profile"
    help = "measure ONNX models on a device, side by side (and int8/fp16 variants of them)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("models", type=Path, nargs="+", help=".onnx files")
        parser.add_argument("--device", type=Path, default=None,
                            help=f"device profile YAML (default: {DEFAULT_DEVICE}, {FOUND_FROM})")
        parser.add_argument("--precision", default=None,
                            help="also measure variants made here, e.g. int8,fp16 (fp32: the "
                                 "model as given); int8 needs calibration data: --calibration")
        parser.add_argument("--calibration", type=Path, default=None,
                            help="search space YAML whose data set calibrates int8 (default: "
                                 "random inputs, said so in the output)")
        parser.add_argument("--calibration-samples", type=int, default=128)
        parser.add_argument("--input-shape", action="append", default=[],
                            help="fix free input dimensions: one sample's shape without the "
                                 "batch, e.g. 3x224x224 (NAME=3x224x224 for several inputs)")
        parser.add_argument("--json", action="store_true", help="print the measurements as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.profile import InputShape, profile_models, profile_table

        profile = load_device_profile(args.device or project_file(DEFAULT_DEVICE, "--device"))
        precisions = [p.strip() for p in (args.precision or "").split(",") if p.strip()]
        shapes = [InputShape.parse(text) for text in args.input_shape]
        result = profile_models(args.models, profile, precisions, shapes, args.calibration,
                                args.calibration_samples)
        if args.json:
            print(json.dumps([row.to_dict() for row in result.rows], indent=1, sort_keys=True))
        else:
            print(profile_table(result, profile.name))
        return 0


class ReportCommand(Command):
    name = "report"
    help = "Pareto table, plot (PNG) and Markdown/HTML report of a search"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--out", type=Path, default=None,
                            help="output folder (default: <run folder>/report)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report import Report, text_table, write_report
        from hwnas.run import RunFolder

        run = RunFolder.load(args.study)
        study = run.open_study()
        report = Report.of(study)
        print(text_table(report.front or report.outcomes, report))
        paths = write_report(study, args.out or run.report_dir)
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return 0


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not a positive number of seconds")
    return value


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

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report import Report, text_table
        from hwnas.run import RunFolder
        from hwnas.search.finalize import finalize_run

        results = finalize_run(args.study, args.top, args.max_steps, args.max_seconds,
                               args.again)
        run = RunFolder.load(args.study)
        study = run.open_study()
        report = Report.of(study)
        print("\nfinalized (each after the trial it finishes):")
        rows = [row for done in results for row in (done.source, done.outcome)]
        print(text_table(rows, report))
        return print_best_and_report(report, study, run)


class DashboardCommand(Command):
    name = "dashboard"
    help = "open a search in optuna-dashboard, budgets (constraints) and artifacts included"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default: 127.0.0.1, this machine only)")
        parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report.dashboard import serve
        from hwnas.run import RunFolder

        run = RunFolder.load(args.study)
        print(f"optuna-dashboard: http://{args.host}:{args.port}/ (Ctrl-C stops it)")
        serve(run, args.host, args.port)
        return 0


class Interrupted(BaseException):
    """A termination signal, raised where the command was (as KeyboardInterrupt is for SIGINT)
    so that its clean-up runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ExportCommand(Command):
    name = "export"
    help = "write a trial's ONNX bytes and its model card (JSON)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--trial", type=int, required=True, help="trial number to export")
        parser.add_argument("--out", type=Path, default=None,
                            help="output folder (default: the run folder's exported/)")

    def run(self, args: argparse.Namespace) -> int:
        import signal
        import threading

        from hwnas.report.card import export_trial
        from hwnas.run import RunFolder

        whole = threading.Event()

        def stop(signum: int, _frame: object) -> None:
            if not whole.is_set():  # once the export is in place, it simply finishes
                raise Interrupted(signum)

        run = RunFolder.load(args.study)
        out = args.out or run.path / "exported"
        # Ctrl-C, SIGTERM (a job scheduler, `timeout`) and SIGHUP: the temporary folder is
        # removed, nothing partial is left in `out`, and that is said
        before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM,
                                                      signal.SIGHUP)}
        try:
            paths = export_trial(run, args.trial, out, whole)
            print(f"model: {paths['model']}\ncard:  {paths['card']}")
            if "pytorch_plan" in paths:
                print(f"PyTorch: {paths['pytorch_weights']} (state_dict) + "
                      f"{paths['pytorch_plan']} (channel plan): hwnas rebuild "
                      f"{paths['pytorch_plan']}")
            return 0
        except Interrupted as exc:
            print(f"hwnas: export interrupted ({signal.Signals(exc.signum).name}): nothing "
                  f"written to {out}", file=sys.stderr)
            return 128 + exc.signum
        finally:
            for number, handler in before.items():
                signal.signal(number, handler)


MIN_SAME_CLASS = 0.95  # rebuild --onnx of a reduced-precision export


class RebuildCommand(Command):
    name = "rebuild"
    help = "rebuild an exported pruned PyTorch model from its channel plan and weights"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("plan", type=Path, help="the <model>.plan.json `hwnas export` wrote")
        parser.add_argument("--weights", type=Path, default=None,
                            help="its state_dict (default: the .pt named in the plan, beside it)")
        parser.add_argument("--onnx", type=Path, default=None,
                            help="check the rebuilt model's outputs against this ONNX file")
        parser.add_argument("--atol", type=float, default=None,
                            help="largest output difference accepted by --onnx (default 1e-3 for "
                                 "an fp32 ONNX; a reduced-precision one (int8, fp16, ...) is "
                                 "judged by class agreement instead, unless --atol is given)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.models.saved import compare_with_onnx, load_pruned, onnx_reduced_precisions, read_plan

        plan = read_plan(args.plan)
        model = load_pruned(args.plan, args.weights)
        source = plan["base_model"]
        print(f"{args.plan}: {source.get('torchvision') or source.get('factory') or source.get('builtin')}"
              f" pruned in {len(plan['steps'])} step(s), "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, input "
              f"{['batch', *plan['input_shape']]}")
        if args.onnx is None:
            return 0
        difference, same_class = compare_with_onnx(model, args.onnx, plan["input_shape"],
                                                   samples=64)
        print(f"against {args.onnx}: largest output difference {difference:.3g}, same class on "
              f"{same_class:.0%} of 64 random inputs")
        reduced = onnx_reduced_precisions(args.onnx)
        if reduced and args.atol is None:
            # the rebuilt model computes in float32: the bytes differ by their quantization
            ok = same_class >= MIN_SAME_CLASS
            print(f"{'ok' if ok else 'FAILED'}: the ONNX runs {', '.join(reduced)} where the rebuilt "
                  f"model computes in fp32, so it is judged by class agreement (at least "
                  f"{MIN_SAME_CLASS:.0%}); --atol judges the difference instead")
            return 0 if ok else 1
        atol = 1e-3 if args.atol is None else args.atol
        ok = difference <= atol
        print(f"{'ok' if ok else 'FAILED'}: largest difference {difference:.3g} "
              f"{'within' if ok else 'over'} --atol {atol:g}")
        return 0 if ok else 1


class DevicesCommand(Command):
    name = "devices"
    help = "check devices: reachability, host key, agent, facts, a calibration measurement"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["check"], help="what to do")
        parser.add_argument("profiles", type=Path, nargs="+", help="device profile YAML files")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.remote.check import check_device, check_table

        results = [check_device(load_device_profile(path)) for path in args.profiles]
        print(json.dumps(results, indent=1, sort_keys=True) if args.json else check_table(results))
        return 0 if all(r["ok"] for r in results) else 1


class AgentCommand(Command):
    name = "agent"
    help = "install, inspect or remove the agent on an SSH device"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["install", "status", "logs", "stop", "uninstall"])
        parser.add_argument("profile", type=Path, help="device profile YAML (connection.kind: ssh)")
        parser.add_argument("--lines", type=int, default=50, help="log lines to show (logs)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.remote.install import RemoteAgent

        remote = RemoteAgent(load_device_profile(args.profile))
        try:
            if args.action == "install":
                from hwnas.train import cache_dir  # imports torch: only where needed

                status = remote.install(cache_dir())
            elif args.action == "logs":
                print(remote.logs(args.lines), end="")
                return 0
            elif args.action == "stop":
                remote.stop()
                status = remote.status()
            elif args.action == "uninstall":
                remote.uninstall()
                print(f"{remote.profile.name}: hwnas-agent removed")
                return 0
            else:
                status = remote.status()
        finally:
            remote.close()
        print(f"{remote.profile.name}: manager {status.manager}, "
              f"{'running' if status.running else 'not running'}, "
              f"agent {status.agent_version or '-'} ({status.detail})")
        return 0 if args.action == "stop" or status.agent_version else 1


COMMANDS = [SearchCommand(), WorkerCommand(), StatusCommand(), ProfileCommand(), ReportCommand(),
            FinalizeCommand(), DashboardCommand(), ExportCommand(), RebuildCommand(), DevicesCommand(), AgentCommand()]


class OneLineParser(argparse.ArgumentParser):
    """A wrong argument is one line, as every other bad input is (argparse adds the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hwnas", description="Hardware-aware compression search, measured on the real device.")
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error, and SSH library logs")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB",
                                  parser_class=OneLineParser)
    for command in COMMANDS:
        sub = verbs.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(command=command)
    return parser


def written_folders(args: argparse.Namespace) -> dict[Path, str | None]:
    """Where a command writes, with the option that moves each: for a full disk's message."""
    folders: dict[Path, str | None] = {}
    if getattr(args, "out", None) is not None:
        folders[args.out] = "--out"
    if getattr(args, "run_dir", None) is not None:
        folders[args.run_dir] = "--run-dir"
    elif args.verb in ("search", "worker"):
        folders[Path("runs")] = "--run-dir"
    if isinstance(getattr(args, "study", None), Path):  # a run folder
        folders.setdefault(args.study, "--out" if args.verb in ("report", "export") else None)
    return folders


def main(argv: list[str] | None = None) -> int:
    from hwnas.logs import quiet_terminal

    args = build_parser().parse_args(argv)
    quiet_terminal()
    if not args.debug:
        # paramiko logs every refused channel and reset socket, which hwnas already turns
        # into one clear error; --debug shows them
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        return args.command.run(args)
    except Exception as exc:
        if args.debug:
            raise
        full = no_space_left(exc, written_folders(args))  # whichever layer hit the full disk
        if full is not None:
            exc = full
        if isinstance(exc, HwnasError):
            from hwnas.redaction import redact

            print(f"hwnas: error: {redact(str(exc))}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:
            print(f"hwnas: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        raise  # not about a file the user named: a bug, shown whole
    except KeyboardInterrupt:
        print("\nhwnas: interrupted; finished trials are saved: run the same command to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
