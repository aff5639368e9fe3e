"""The verbs that read a finished search: report, dashboard, export, rebuild."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwnas.cli.common import Command


class ReportCommand(Command):
    name = "report"
    help = "Pareto table, plot (PNG) and Markdown/HTML report of a search"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", type=Path, help="the run folder of a search (holds run.json)")
        parser.add_argument("--out", type=Path, default=None,
                            help="output folder (default: <run folder>/report)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.report import Report, text_table, write_report
        from hwnas.sensitivity import sensitivity_table
        from hwnas.run import RunFolder

        run = RunFolder.load(args.study)
        study = run.open_study()
        report = Report.of(study)
        print(text_table(report.front or report.outcomes, report))
        for found in report.sensitivity:  # each unit changed alone (search.sensitivity)
            print(f"\nper-unit sensitivity (accuracy drop / mean cosine):\n"
                  f"{sensitivity_table(found)}")
        paths = write_report(study, args.out or run.report_dir, run.path)
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return 0


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
