"""The `hwnas` command: its parser, one small command class per verb (in study_verbs.py,
result_verbs.py, device_verbs.py), and the one-line error every failure ends in."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from hwnas import __version__
from hwnas.cli.device_verbs import AgentCommand, DevicesCommand, ProfileCommand
from hwnas.cli.result_verbs import DashboardCommand, ExportCommand, RebuildCommand, ReportCommand
from hwnas.cli.study_verbs import (FinalizeCommand, SearchCommand, SensitivityCommand,
                                    StatusCommand, WorkerCommand)
from hwnas.disk import no_space_left
from hwnas.errors import HwnasError

COMMANDS = [SearchCommand(), WorkerCommand(), StatusCommand(), ProfileCommand(), ReportCommand(),
            FinalizeCommand(), SensitivityCommand(), DashboardCommand(), ExportCommand(), RebuildCommand(), DevicesCommand(), AgentCommand()]


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

