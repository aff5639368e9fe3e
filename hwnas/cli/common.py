"""What every `hwnas` verb shares: the command contract, argument types, default files."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    checkout = Path(__file__).resolve().parents[2] / relative
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


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not a positive number of seconds")
    return value


def add_torch_device(parser: argparse.ArgumentParser) -> None:
    """--torch-device: where this machine's PyTorch work runs (hwnas/torch_device.py)."""
    parser.add_argument("--torch-device", default="auto", metavar="auto|cpu|cuda:N|mps",
                        help="where training, fine-tuning, saliency and evaluation in PyTorch "
                             "run on this machine (default: auto: the first CUDA GPU, else "
                             "Apple MPS, else the CPU); recorded in the study and model cards")


class Command:
    """One verb: its name, its help line, its arguments, and what it runs (an exit code)."""

    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError
