"""Measuring a trial's bytes on the device it leased, or on another of its pool if the device
is lost; a retried trial reuses what its predecessor measured."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.errors import DeviceError, ExportError, JobInterrupted, MeasurementError
from hwnas.export.onnx import ExportedModel
from hwnas.records import Artifact, Candidate, Measurement, TrialOutcome
from hwnas.remote.pool import Device, DevicePool
from hwnas.remote.screen import CompatibilityScreen, screen_compatibility

from hwnas.search.candidates import Timings

if TYPE_CHECKING:
    from hwnas.layers import UnitTime
    from hwnas.remote.client import AgentClient
    from hwnas.search.candidates import CandidateBuilder, TrialContext
    from hwnas.search.twins import Progress


#: jobs of one measurement an agent may interrupt (stopping or restarting) before its device
#: is treated as lost
MAX_INTERRUPTED_JOBS = 2


class DeviceLease:
    """The device a trial holds; replaced by another of its pool if it is lost."""

    def __init__(self, pool: DevicePool, device_pool: str | None = None) -> None:
        self.pool = pool
        self.device: Device = pool.acquire(device_pool)  # any device, or one of that pool
        self.lost: list[str] = []

    def replace(self) -> None:
        self.lost.append(self.device.name)
        self.pool.mark_down(self.device)
        self.device = self.pool.acquire(self.device.pool)

    def release(self) -> None:
        self.pool.release(self.device)


def ship(client: "AgentClient", artifact: Artifact) -> None:
    """The artifact's bytes to the agent unless it holds them: one ONNX file, or a model
    folder (an onnxruntime-genai folder: every file, addressed by its manifest's sha256)."""
    folder = Path(artifact.path) if artifact.path else None
    if folder is not None and folder.is_dir():
        from hwnas.profile_generation import decoder_file

        sent = client.ensure_files(folder, decoder_file(folder))
        if sent != artifact.sha256:
            raise ExportError(f"{folder} changed since it was exported: its manifest is "
                              f"{sent[:12]}, the trial recorded {artifact.sha256[:12]}")
        return
    client.ensure_model(artifact)


class TrialMeasurer:
    """Measures a trial's artifacts on its leased device (on another of its pool if the device
    is lost). A trial retried after its controller died measures nothing twice: bytes its
    predecessor measured are reused, and a job it left on the agent is collected."""

    def __init__(self, lease: DeviceLease, timings: Timings, progress: "Progress | None" = None,
                 inherited: TrialOutcome | None = None) -> None:
        self.lease, self.timings, self.progress = lease, timings, progress
        self.reused: list[str] = []
        self.inherit(inherited)

    def inherit(self, inherited: TrialOutcome | None) -> None:
        """What a dead controller's trial of the same candidate measured, to reuse."""
        self.known = {m.model_sha256: m for m in (inherited.screen_measurement, inherited.measurement)
                      if m is not None} if inherited else {}
        self.known_pool = inherited.device_pool if inherited else None
        self.pending = inherited.pending_job if inherited else None

    def measure(self, artifact: Artifact, rounds: int | None = None,
                layers: bool = False) -> Measurement:
        """``rounds``: more measurement rounds than the profile's (a figure whose interval
        holds its budget is measured again with more; search/screening.py); ``layers``: a
        per-node profile as well (profiled runs after the timed ones: the figures stay)."""
        interrupted = 0
        while True:
            device = self.lease.device
            known = self.known.get(artifact.sha256) if rounds is None and not layers else None
            # measured on a device of this one's pool (interchangeable ones): not again
            if known is not None and device.pool in (self.known_pool, known.device):
                self.reused.append(artifact.sha256)
                return known
            try:
                with self.timings.phase("ship"):
                    ship(device.client, artifact)
                with self.timings.phase("measure"):
                    request = device.profile.measure_request(artifact.sha256)
                    if rounds is not None:
                        request = dataclasses.replace(request, rounds=rounds)
                    if layers:
                        request = dataclasses.replace(request, layer_profile=True)
                    measurement = self._collect_pending(device, artifact) or device.client.measure(
                        request,
                        on_submitted=lambda job: self._note(device.name, job, artifact.sha256))
                self._note(None)
                return measurement
            except JobInterrupted:
                # the agent stopped during the job: measure again; an agent that is back
                # measures it, one that is gone raises DeviceError on the next call
                self._note(None)
                interrupted += 1
                if interrupted > MAX_INTERRUPTED_JOBS:
                    self.lease.replace()
                    interrupted = 0
            except DeviceError:
                # the transport already reconnected and retried with back-off: it is gone
                self.lease.replace()

    def screen(self, artifact: Artifact, exported: ExportedModel,
               candidate: Candidate) -> CompatibilityScreen:
        """Which nodes the device's accelerator refuses (on another of its pool if it is lost)."""
        while True:
            device = self.lease.device
            try:
                with self.timings.phase("compatibility"):
                    return screen_compatibility(device.client, device.profile, artifact,
                                                exported, dict(candidate.precision_plan))
            except DeviceError:
                self.lease.replace()

    def _collect_pending(self, device: Device, artifact: Artifact) -> Measurement | None:
        pending, self.pending = self.pending, None
        if pending is None or tuple(pending[::2]) != (device.name, artifact.sha256):
            return None
        try:
            measurement = device.client.collect(pending[1], device.profile.measurement.timeout_s)
        except (MeasurementError, DeviceError):  # interrupted, failed or forgotten: measure anew
            return None
        self.reused.append(artifact.sha256)
        return measurement

    def _note(self, device: str | None, job: str = "", sha256: str = "") -> None:
        if self.progress is not None:
            self.progress.update(pending_job=(device, job, sha256) if device else None)


def measure_base_model(ctx: "TrialContext", builder: "CandidateBuilder"
                       ) -> tuple[Artifact, Measurement, tuple["UnitTime", ...]]:
    """The unpruned fp32 base model's bytes and their measurement on a device of the pool,
    with its time per module (a layer profile after the timed runs)."""
    from hwnas.layers import file_unit_times

    lease = DeviceLease(ctx.devices)
    try:
        work = ctx.run.path / "work" / "base-model"
        artifact = builder.export(ctx.base_model, builder.base_candidate(), work / "base.onnx")
        measurement = TrialMeasurer(lease, Timings()).measure(artifact, layers=True)
        return artifact, measurement, file_unit_times(measurement.layers, artifact.path)
    finally:
        lease.release()
        shutil.rmtree(work, ignore_errors=True)
