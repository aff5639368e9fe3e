"""Uploads into the model store: streamed to disk while hashed (never whole in memory), loaded
once by a worker to prove they are a model that reads only its own files, then stored
content-addressed. A model is one ONNX file addressed by its sha256, or several files
(manifest.py) addressed by their manifest's sha256, sent as one body: the manifest's JSON on
the first line, then each file's bytes in the manifest's order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from typing import Any, Callable, Dict, Iterator, Tuple

from hwnas_agent.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from hwnas_agent.manifest import parse as parse_manifest
from hwnas_agent.protocol import ProtocolError
from hwnas_agent.storage import FileMismatch, ModelStore, StoreFull
from hwnas_agent.workers import Workers, WorkerSlot


class ModelIntake:
    """``in_use`` (sha256 -> jobs that need it) and ``lock`` are the agent's: a model a queued
    or running job needs is never evicted to make room."""

    def __init__(self, models: ModelStore, workers: Workers, slot: WorkerSlot,
                 lock: threading.Lock, in_use: Dict[str, int]) -> None:
        self.models = models
        self.workers = workers
        self.slot = slot
        self.lock = lock
        self.in_use = in_use
        self.reserved_bytes = 0  # declared lengths of uploads in progress

    @contextlib.contextmanager
    def _reserved(self, length: int) -> Iterator[None]:
        """Room for ``length`` more bytes, evicting what no job needs; 507 if none."""
        with self.lock:
            try:
                self.models.evict(set(self.in_use), room_for=self.reserved_bytes + length)
            except StoreFull as exc:
                raise ProtocolError(507, "store_full", str(exc))
            self.reserved_bytes += length
        try:
            yield
        finally:
            with self.lock:
                self.reserved_bytes -= length

    def _stored(self, sha256: str, tmp: str, signature: Dict[str, Any],
                manifest: Any = None) -> Tuple[int, Dict[str, Any]]:
        meta = self.models.commit(tmp, sha256, signature, manifest)
        with self.lock:
            meta["evicted"] = self.models.evict(set(self.in_use) | {sha256})
        return 201, meta

    def put_model(self, sha256: str, read: Callable[[int], bytes], length: int
                  ) -> Tuple[int, Dict[str, Any]]:
        """One ONNX file, stored by its sha256."""
        tmp = None
        with self._reserved(length):
            try:
                with _receiving():
                    tmp, actual = self.models.receive(read, length)
                if actual != sha256:
                    raise ProtocolError(422, "sha256_mismatch", "the body hashes to %s but the "
                                        "URL names %s; nothing was stored" % (actual, sha256))
                existing = self.models.meta(sha256)
                if existing is not None:
                    return 200, existing
                with self.slot.load_check():
                    signature = self.workers.inspect(tmp)
                return self._stored(sha256, tmp, signature)
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)

    def put_files(self, sha256: str, readline: Callable[[int], bytes],
                  read: Callable[[int], bytes], length: int, max_bytes: int
                  ) -> Tuple[int, Dict[str, Any]]:
        """A model of several files: every file checked against its sha256 as it arrives,
        the whole checked by a worker, stored only when all of it is right."""
        manifest, header_bytes = _read_manifest(readline, max_bytes)
        if manifest.sha256 != sha256:
            raise ProtocolError(422, "sha256_mismatch", "the manifest hashes to %s (the sha256 of "
                                "its canonical JSON) but the URL names %s; nothing was stored"
                                % (manifest.sha256, sha256))
        if header_bytes + manifest.total_bytes != length:
            raise ProtocolError(400, "bad_length", "the body is %d bytes; the manifest line (%d "
                                "bytes) and its files (%d bytes) make %d" % (
                                    length, header_bytes, manifest.total_bytes,
                                    header_bytes + manifest.total_bytes))
        tmp = None
        with self._reserved(manifest.total_bytes):
            try:
                with _receiving():
                    tmp = self.models.receive_files(read, manifest)
                existing = self.models.meta(sha256)
                if existing is not None:
                    return 200, existing
                with self.slot.load_check():
                    signature = self.workers.inspect(os.path.join(tmp, manifest.model),
                                                     manifest.data_files())
                return self._stored(sha256, tmp, signature, manifest)
            finally:
                if tmp is not None and os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)


def _read_manifest(readline: Callable[[int], bytes], max_bytes: int) -> Tuple[Manifest, int]:
    line = readline(MAX_MANIFEST_BYTES + 1)
    if not line.endswith(b"\n"):
        raise ProtocolError(400, "bad_manifest", "the body must start with the manifest's JSON "
                            "on one line of at most %d bytes, then the files" % MAX_MANIFEST_BYTES)
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(400, "bad_manifest", "the manifest is not valid JSON: %s" % exc)
    try:
        return parse_manifest(data, max_bytes), len(line)
    except ManifestError as exc:
        raise ProtocolError(422, "bad_manifest", str(exc))


@contextlib.contextmanager
def _receiving() -> Iterator[None]:
    """What goes wrong while bytes arrive, as the client's answer."""
    try:
        yield
    except EOFError as exc:  # the client stopped sending, or too slowly
        raise ProtocolError(400, "truncated_body", "the upload did not arrive whole: %s" % exc)
    except FileMismatch as exc:
        raise ProtocolError(422, "sha256_mismatch", "%s; nothing was stored" % exc)
    except OSError as exc:
        raise ProtocolError(507, "store_failed", "cannot store the upload: %s"
                            % (exc.strerror or exc))
