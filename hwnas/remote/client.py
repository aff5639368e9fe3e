"""AgentClient: the controller's side of the protocol, over any transport."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from hwnas_agent.manifest import ManifestError
from hwnas_agent.manifest import from_folder as manifest_from_folder
from hwnas_agent.protocol import (
    AUTH_HEADER,
    AUTH_SCHEME,
    FINISHED_STATES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    MeasureRequest,
    error_message,
)

from hwnas.errors import DeviceError, ExportError, JobInterrupted, MeasurementError
from hwnas.records import Artifact, Measurement
from hwnas.remote.transport import Response, Transport

LONG_POLL_S = 20.0  # the agent holds the request until the job ends: no polling traffic


class AgentUnauthorized(DeviceError):
    """The agent refused the token hwnas sent (or hwnas had none)."""


class AgentClient:
    """``token`` is the agent's secret; ``token_source`` says where it came from, for the
    message when the agent refuses it."""

    def __init__(self, transport: Transport, device: str, token: str = "",
                 token_source: str = "") -> None:
        self.transport = transport
        self.device = device
        self.token = token
        self.token_source = token_source

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json", timeout: float = 60.0) -> Response:
        headers = {PROTOCOL_HEADER: str(PROTOCOL_VERSION),
                   AUTH_HEADER: f"{AUTH_SCHEME} {self.token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        response = self.transport.request(method, path, body, headers, timeout)
        if response.status == 409:
            raise DeviceError(f"{self.device}: {error_message(response.json())}")
        if response.status == 401:
            source = f" (hwnas used the token {self.token_source})" if self.token_source else ""
            raise AgentUnauthorized(
                f"{self.device}: the agent refused the request: it needs its secret token"
                f"{source}. Run `hwnas agent install PROFILE` for this device: it creates the "
                f"token if missing and restarts the agent with it")
        return response

    def hello(self) -> dict[str, Any]:
        response = self._call("GET", "/v1/hello")
        payload = response.json()
        if response.status != 200 or payload.get("agent") != "hwnas-agent":
            raise DeviceError(f"{self.device}: the process answering is not an hwnas agent "
                              f"(HTTP {response.status}: {error_message(payload)})")
        if payload.get("protocol_version") != PROTOCOL_VERSION:
            raise DeviceError(f"{self.device}: agent speaks protocol {payload.get('protocol_version')}"
                              f", hwnas speaks {PROTOCOL_VERSION}: install matching versions")
        return payload

    def facts(self) -> dict[str, Any]:
        return self._call("GET", "/v1/facts").json()

    def has_model(self, sha256: str) -> bool:
        response = self._call("GET", f"/v1/models/{sha256}")
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise DeviceError(f"{self.device}: model lookup failed: {error_message(response.json())}")

    def ensure_model(self, artifact: Artifact) -> bool:
        """Ship the artifact unless the agent already holds its sha256; True if shipped."""
        if self.has_model(artifact.sha256):
            return False
        response = self._call("PUT", f"/v1/models/{artifact.sha256}", artifact.read_bytes(),
                              "application/octet-stream", timeout=600.0)
        if response.status not in (200, 201):
            raise MeasurementError(f"{self.device} refused model {artifact.sha256[:12]}: "
                                   f"{error_message(response.json())}")
        return True

    def ensure_files(self, folder: str | Path, model: str) -> str:
        """Ship a model made of every file under ``folder`` (ONNX with external data, ...),
        ``model`` being the file a runtime opens, unless the agent already holds it; returns
        its address (its manifest's sha256), the ``model_sha256`` of a MeasureRequest."""
        try:
            manifest = manifest_from_folder(str(folder), model)
        except ManifestError as exc:
            raise ExportError(f"{folder}: {exc}") from None
        if self.has_model(manifest.sha256):
            return manifest.sha256
        body = bytearray(manifest.canonical() + b"\n")  # the manifest line, then the files
        for entry in manifest.files:
            data = (Path(folder) / entry.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ExportError(f"{Path(folder) / entry.path} changed while it was being sent")
            body += data
        response = self._call("PUT", f"/v1/models/{manifest.sha256}/files", bytes(body),
                              "application/octet-stream", timeout=600.0)
        if response.status not in (200, 201):
            raise MeasurementError(f"{self.device} refused model {manifest.sha256[:12]} "
                                   f"({folder}): {error_message(response.json())}")
        return manifest.sha256

    def submit(self, request: MeasureRequest) -> str:
        response = self._call("POST", "/v1/jobs", json.dumps(request.to_dict()).encode())
        if response.status != 202:
            raise MeasurementError(f"{self.device} refused the measure job: "
                                   f"{error_message(response.json())}")
        return response.json()["job_id"]

    def job(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        path = f"/v1/jobs/{job_id}" + (f"?wait={wait_s:g}" if wait_s else "")
        response = self._call("GET", path, timeout=wait_s + 60.0)
        if response.status != 200:
            raise DeviceError(f"{self.device}: job {job_id}: {error_message(response.json())}")
        return response.json()

    def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            record = self.job(job_id, wait_s=max(0.0, min(LONG_POLL_S, left)))
            if record["state"] in FINISHED_STATES:
                return record
            if time.monotonic() > deadline:
                raise MeasurementError(f"{self.device}: job {job_id} still {record['state']} "
                                       f"after {timeout_s:.0f} s")
            if "wait" in record:  # the agent holds enough long-polls: ask again, not at once
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def measure(self, request: MeasureRequest,
                on_submitted: Callable[[str], None] | None = None) -> Measurement:
        """Submit and wait; ``on_submitted(job_id)`` lets the caller record the job first, so
        that a controller killed while it waits can collect the finished result later."""
        job_id = self.submit(request)
        if on_submitted is not None:
            on_submitted(job_id)
        return self.collect(job_id, request.timeout_s)

    def collect(self, job_id: str, timeout_s: float) -> Measurement:
        """The measurement of a job submitted earlier (waiting for it if it still runs)."""
        # the agent enforces timeout_s on the run; allow for queueing and start-up on top
        record = self.wait(job_id, timeout_s * 2 + 60)
        if record["state"] == "interrupted":
            raise JobInterrupted(f"{self.device}: measurement interrupted: "
                                 f"{record.get('error', 'no reason given')}")
        if record["state"] != "done":
            raise MeasurementError(f"{self.device}: measurement {record['state']}: "
                                   f"{record.get('error', 'no reason given')}")
        return Measurement.from_agent(self.device, record["measurement"])
