"""Refuse, before any trial, a model the search cannot handle, naming the module and the way out.

The check does once what the search would do many times, at its most aggressive: the base
model runs on the task's input; the candidate with every knob at its smallest keep ratio and
the largest global ratio is pruned, run, exported to ONNX and run by onnxruntime. A failure is
traced to the knob and stage that cause it, and width that cannot change a layer (grouped
convolutions whose groups cannot shrink to the device's channel multiple) is named rather
than searched in vain. Without it, such a model fails every trial, or worse, the search
spends its trials on a knob that does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from hwnas.compress.prune import PruningSetup, prune
from hwnas.config.models import SearchSpace
from hwnas.errors import ConfigError
from hwnas.models import first_line, run_once
from hwnas.models.unsupported import unsupported_module
from hwnas.knobs import Candidate, Knob, registered

TIME_LIMIT_S = 300.0
STRUCTURE_OFF = "knobs: {width: null, pruning: null, heads: null, mlp: null}"


class _Timeout(BaseException):
    """Not an Exception: the model's own ``except Exception`` must not swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    expired: list[bool] = []

    def expire(signum, frame):  # type: ignore[no-untyped-def]
        expired.append(True)
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if expired:
        # the handler's raise landed where Python drops it (a finalizer run by the garbage
        # collector prints and ignores it): the limit was still exceeded
        raise _Timeout


@dataclasses.dataclass(frozen=True)
class PreflightReport:
    candidate: Candidate  # the most aggressive candidate of the search space
    parameters_base: int
    parameters_pruned: int
    seconds: float

    def summary(self) -> str:
        return (f"pre-flight: the most aggressive candidate prunes {self.parameters_base:,} to "
                f"{self.parameters_pruned:,} parameters, runs and exports "
                f"({self.seconds:.1f} s)")


def most_aggressive(setup: PruningSetup, space: SearchSpace) -> Candidate:
    """Every knob at its most aggressive value (precision: fp32, structure is what breaks)."""
    return Candidate.of({knob.name: knob.most_aggressive(knob.settings(space.knobs),
                                                         list(setup.units_of(knob.name)))
                         for knob in registered("vision")})


def _parts(setup: PruningSetup, candidate: Candidate) -> list[tuple[Knob, str, Candidate]]:
    """The candidate's knobs one at a time, every other knob left neutral: which one breaks?"""
    values = dict(candidate.values)
    neutral = {knob.name: knob.neutral(list(setup.units_of(knob.name))) for knob in registered("vision")
               if knob.name in values}
    return [(knob, label, Candidate.of({**neutral, knob.name: part}))
            for knob in registered("vision") if knob.name in values
            for label, part in knob.alone(values[knob.name])]


def _run(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(example)


def _check_output(output: object, num_classes: int, what: str, shape: tuple[int, ...]) -> None:
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"{what}: on one input of shape {list(shape)} it returns {got}; hwnas "
                          f"needs class scores of shape (1, {num_classes}) (the data set's "
                          f"number of classes)")


def preflight(setup: PruningSetup, space: SearchSpace, num_classes: int,
              export: Callable[[nn.Module, Path], None] | None = None,
              time_limit_s: float = TIME_LIMIT_S) -> PreflightReport:
    """Raise ConfigError naming the module, the knob and the way out, or return a report.
    ``export(model, path)`` writes fp32 ONNX (default: hwnas.export.onnx.export_fp32)."""
    started = time.perf_counter()
    # random, not zeros: an all-zero input hides wrong wiring behind equal outputs
    example = torch.randn(setup.example_input.shape, generator=torch.Generator().manual_seed(0))
    shape = tuple(example.shape[1:])
    base_output = run_once(setup.base, example)
    _check_output(base_output, num_classes, "base_model", shape)
    candidate = most_aggressive(setup, space)
    parameters = sum(p.numel() for p in setup.base.parameters())
    values = dict(candidate.values)
    if not any(knob.changes_structure(values[knob.name]) for knob in registered("vision")
               if knob.name in values):
        return PreflightReport(candidate, parameters, parameters, time.perf_counter() - started)
    unsupported = unsupported_module(setup.base)
    if unsupported is not None:
        name, cls, why = unsupported
        raise ConfigError(f"base_model: module {name} ({cls}) cannot be pruned because of {why}; "
                          f"search its precision only ({STRUCTURE_OFF}) or choose another model")
    try:
        with _time_limit(time_limit_s):
            pruned = prune(setup, candidate, []).module
            output = _run(pruned, example)
    except _Timeout:
        raise ConfigError(f"base_model: torch-pruning did not finish tracing the model within "
                          f"{time_limit_s:.0f} s; it cannot follow this architecture: search "
                          f"its precision only ({STRUCTURE_OFF})") from None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - localised below
        try:
            with _time_limit(time_limit_s):
                message = _explain(setup, candidate, exc)
        except _Timeout:
            message = (f"base_model: pruning with every knob at its most aggressive value fails "
                       f"({first_line(exc)})")
        raise ConfigError(message) from None
    _check_output(output, num_classes, "the pruned model", shape)
    for knob in registered("vision"):  # a knob that cannot do what it is asked, named
        problem = knob.check_pruned(setup, values[knob.name], pruned) \
            if knob.name in values else None
        if problem:
            raise ConfigError(problem)
    if export is None:
        from hwnas.export.onnx import export_fp32

        def export(model: nn.Module, path: Path) -> None:
            export_fp32(model, shape, path)

    _check_export(pruned, example, export)
    return PreflightReport(candidate, parameters, sum(p.numel() for p in pruned.parameters()),
                           time.perf_counter() - started)


def _explain(setup: PruningSetup, candidate: Candidate, exc: BaseException) -> str:
    failing = []
    for knob, part, single in _parts(setup, candidate):
        try:
            _run(prune(setup, single, []).module, torch.randn(setup.example_input.shape))
        except Exception as part_exc:  # noqa: BLE001 - reported
            advice = knob.advice or f"set knobs.{knob.name}: null"
            failing.append(f"{part} fails ({first_line(part_exc)}): {advice}")
    leftover = [name for name, m in setup.base.named_modules()
                if isinstance(m, nn.MultiheadAttention)]
    note = (f"; the model keeps nn.MultiheadAttention in {leftover[:3]}, which hwnas can split "
            f"into prunable heads only in torchvision ViT encoder blocks (batch-first "
            f"self-attention)" if leftover else "")
    if not failing:
        return (f"base_model: pruning with every knob at its most aggressive value fails "
                f"({first_line(exc)}), though no knob fails alone; narrow the knobs' ranges"
                f"{note}")
    return "base_model: the search cannot prune this model:\n  " + "\n  ".join(failing) + note


def _check_export(model: nn.Module, example: torch.Tensor,
                  export: Callable[[nn.Module, Path], None]) -> None:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwnas-preflight-") as folder:
        path = Path(folder) / "most-aggressive.onnx"
        try:
            export(model, path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - reported
            raise ConfigError(f"base_model: the most aggressively pruned model does not export "
                              f"to ONNX or does not run in onnxruntime: {first_line(exc)}") from None
    expected = _run(model, example).numpy()
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        raise ConfigError(f"base_model: the exported ONNX of the most aggressively pruned model "
                          f"computes other outputs than the PyTorch model (max difference "
                          f"{float(np.abs(got - expected).max()):.3g}); it cannot be searched")
