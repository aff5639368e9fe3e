"""Accuracy and output fidelity of the exact exported bytes.

Accuracy runs on the controller's CPU. Output fidelity compares a candidate's outputs with its fp32
parent's (the same pruned, fine-tuned model exported without a precision plan) on held-out
data, running the candidate on the device's own execution providers where the controller
has them (the CPU; Qualcomm's HTP through onnxruntime-qnn's simulator) and saying so where it
has not (TensorRT on a Jetson: the CPU stands in, and the record names it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hwnas_agent.protocol import ONNXRUNTIME

from hwnas.data import ArraySplit, Split
from hwnas.records import Artifact, OutputFidelity

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile

EVAL_BATCH = 500
FIDELITY_BATCH = 32
FIDELITY_SAMPLES = 256  # held-out samples a trial's fidelity is measured on (validation split)
CONTROLLER_CPU = "CPUExecutionProvider on the controller"


def _feed(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The input as the model declares it (a float16 graph input gets float16)."""
    meta = session.get_inputs()[0]
    return {meta.name: x.astype(np.float16 if meta.type == "tensor(float16)" else np.float32)}


def _cpu_session(model: bytes | str) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_batches(session: Any, x: np.ndarray, batch: int, fixed_batch: bool = False) -> np.ndarray:
    """Outputs for all of ``x``; with ``fixed_batch`` the last batch is padded (and the padding
    dropped) for sessions compiled for one batch size."""
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        rows = len(chunk)
        if fixed_batch and rows < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - rows, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(session.run(None, _feed(session, chunk))[0])[:rows])
    return np.concatenate(outputs).astype(np.float32)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, runtime: str = CONTROLLER_CPU,
                    emulated: bool = False) -> OutputFidelity:
    """Cosine similarity per sample (outputs flattened) and arg-max agreement."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    dots = (ref * out).sum(axis=1)
    # two all-zero outputs agree; one all-zero output against a non-zero one does not
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                      np.where((np.abs(ref).sum(1) == 0) & (np.abs(out).sum(1) == 0), 1.0, 0.0))
    agreement = float((ref.argmax(1) == out.argmax(1)).mean())
    return OutputFidelity(float(cosine.mean()), float(cosine.min()), agreement, len(ref), runtime,
                    emulated)


class DeviceSession:
    """The candidate opened with the device profile's execution providers, on this machine,
    where they exist here; otherwise the CPU, and ``runtime`` says which."""

    def __init__(self, model_path: str | Path, device: "DeviceProfile | None",
                 batch: int = FIDELITY_BATCH) -> None:
        self.batch = batch
        self.emulated = False
        self.fixed_batch = False
        self.session, self.runtime = None, CONTROLLER_CPU
        if device is not None and device.runtime.name == ONNXRUNTIME:
            self._open_like_device(str(model_path), device)
        if self.session is None:
            self.session = _cpu_session(str(model_path))
            wanted = (None if device is None else "native TensorRT" if device.runtime.name != \
                      ONNXRUNTIME else device.runtime.execution_providers[0])
            if wanted not in (None, "CPUExecutionProvider"):
                self.runtime = f"{CONTROLLER_CPU} ({wanted} of {device.name} is not available here)"

    def _open_like_device(self, path: str, device: "DeviceProfile") -> None:
        from hwnas_agent.runtimes.onnxruntime import SessionPlan, available_providers, emulation

        request = device.measure_request("0" * 64)
        if not set(request.execution_providers) <= set(available_providers()):
            return
        request = dataclasses.replace(request, batch_size=self.batch, intra_op_threads=0)
        import onnxruntime as ort

        plan = SessionPlan(ort, request, path)
        self.session = plan.open(fallback=not request.disable_cpu_fallback)
        self.fixed_batch = bool(plan.static_batch)
        why = emulation(list(request.execution_providers), plan.options)
        self.emulated = why is not None
        providers = "+".join(request.execution_providers)
        self.runtime = f"{providers} on the controller" + (" (simulated)" if self.emulated else "")

    def outputs(self, x: np.ndarray) -> np.ndarray:
        return run_batches(self.session, x, self.batch, self.fixed_batch)


def output_fidelity(parent: Artifact, candidate: Artifact, x: np.ndarray,
                    device: "DeviceProfile | None" = None) -> OutputFidelity:
    """``candidate`` (on the device's providers where possible) against ``parent`` (fp32, CPU)
    on the held-out samples ``x``."""
    reference = run_batches(_cpu_session(parent.read_bytes()), x, EVAL_BATCH)
    candidate.read_bytes()  # the sha256 check: the bytes compared are the bytes deployed
    opened = DeviceSession(candidate.path, device)
    return compare_outputs(reference, opened.outputs(x), opened.runtime, opened.emulated)


def onnx_split_accuracy(artifact: Artifact, split: Split) -> float:
    """Accuracy over a split, read batch by batch (an image folder is never held whole)."""
    session = _cpu_session(artifact.read_bytes())
    correct = 0
    for images, labels in split.batches(EVAL_BATCH):
        logits = session.run(None, _feed(session, images))[0]
        correct += int((logits.argmax(1) == labels).sum())
    return correct / max(1, len(split))


def onnx_accuracy(artifact: Artifact, x: np.ndarray, y: np.ndarray) -> float:
    return onnx_split_accuracy(artifact, ArraySplit(x, y))
