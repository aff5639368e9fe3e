"""On-disk state of the agent: the content-addressed model store and persisted jobs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from hwnas_agent.manifest import Manifest
from hwnas_agent.manifest import parse as parse_manifest
from hwnas_agent.protocol import JobState

UPLOAD_PREFIX = ".upload-"
REMOVED_PREFIX = ".removed-"
BUNDLE_SUFFIX = ".d"
CHUNK_BYTES = 1 << 20


def write_json_atomic(path: str, payload: Any) -> None:
    """Write then rename: a crash leaves the old file or the new one, never half of one."""
    directory = os.path.dirname(path) or "."
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class StoreFull(Exception):
    """No room for an upload even after evicting every model no job needs."""


class FileMismatch(Exception):
    """A file of a multi-file upload does not hash to its manifest entry."""


def _copy(read: Callable[[int], bytes], out: Any, length: int, digest: Any) -> None:
    """``length`` bytes from ``read`` to ``out``, hashed as they come; EOFError if the stream
    ends or stalls early."""
    left = length
    while left > 0:
        try:
            chunk = read(min(CHUNK_BYTES, left))
        except OSError as exc:  # the sender stalled or went away
            raise EOFError("expected %d bytes, got %d (%s)"
                           % (length, length - left, exc or type(exc).__name__))
        if not chunk:
            raise EOFError("expected %d bytes, got %d" % (length, length - left))
        digest.update(chunk)
        out.write(chunk)
        left -= len(chunk)


def _remove(path: str) -> None:
    """A file, or a folder renamed away first (a kill mid-removal leaves no half model)."""
    if os.path.isdir(path) and not os.path.islink(path):
        doomed = os.path.join(os.path.dirname(path), REMOVED_PREFIX + os.path.basename(path))
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        os.unlink(path)


class ModelStore:
    """Models stored as ``<sha256>.onnx`` with ``<sha256>.json`` (their signature), or, made of
    several files (manifest.py), as the folder ``<sha256>.d`` holding exactly the manifest's
    files, addressed by the manifest's sha256, with ``<sha256>.json`` (signature and manifest).

    With ``max_bytes``, storing a model evicts the least recently used others until the
    store fits; models in use by a queued or running job (``protected``) are never evicted.
    Uploads in progress count against the cap (the caller reserves their length); those left
    by a killed agent (``.upload-*``) are removed when the store opens (one agent per store).
    """

    def __init__(self, root: str, max_bytes: Optional[int] = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        os.makedirs(root, exist_ok=True)
        self.stale_removed = self._remove_stale()

    def _remove_stale(self) -> int:
        removed = 0
        for name in os.listdir(self.root):
            if name.startswith((UPLOAD_PREFIX, ".tmp-", REMOVED_PREFIX)):
                try:
                    _remove(os.path.join(self.root, name))
                    removed += 1
                except OSError:
                    pass
        return removed

    def folder(self, sha256: str) -> str:
        """Where a multi-file model's files are (it exists for those only)."""
        return os.path.join(self.root, sha256 + BUNDLE_SUFFIX)

    def _stored_path(self, sha256: str) -> str:
        folder = self.folder(sha256)
        return folder if os.path.isdir(folder) else os.path.join(self.root, sha256 + ".onnx")

    def touch(self, sha256: str) -> None:
        """Mark as used now (the model file's, or folder's, mtime is its last use)."""
        try:
            os.utime(self._stored_path(sha256))
        except OSError:
            pass

    def stored(self) -> List[Tuple[float, int, str]]:
        entries = []
        for name in os.listdir(self.root):
            if name.startswith("."):
                continue
            for suffix in (".onnx", BUNDLE_SUFFIX):
                if not name.endswith(suffix):
                    continue
                sha256 = name[:-len(suffix)]
                try:
                    stat = os.stat(os.path.join(self.root, name))
                except OSError:  # evicted meanwhile
                    continue
                size = stat.st_size
                if suffix == BUNDLE_SUFFIX:
                    size = int((self.meta(sha256) or {}).get("size_bytes") or 0)
                entries.append((stat.st_mtime, size, sha256))
        return sorted(entries)

    def evict(self, protected: Set[str], room_for: int = 0) -> List[str]:
        """Evict least recently used models until the store, with ``room_for`` more bytes (the
        uploads in progress), fits; raises StoreFull if uploads cannot fit."""
        if self.max_bytes is None:
            return []
        entries = self.stored()
        total = sum(size for _, size, _ in entries) + room_for
        evicted = []
        for _, size, sha256 in entries:
            if total <= self.max_bytes:
                break
            if sha256 in protected:
                continue
            for path in (self._stored_path(sha256), os.path.join(self.root, sha256 + ".json")):
                try:
                    _remove(path)
                except FileNotFoundError:
                    pass
            total -= size
            evicted.append(sha256)
        if total > self.max_bytes and room_for:
            raise StoreFull("the model store (cap %d bytes) is full of models that queued or "
                            "running jobs need; retry when they finish" % self.max_bytes)
        return evicted

    def path(self, sha256: str) -> str:
        """The file a runtime opens."""
        return self.files(sha256)[0]

    def files(self, sha256: str) -> Tuple[str, List[str]]:
        """(the file a runtime opens, its data files relative to that file's folder)."""
        folder = self.folder(sha256)
        if os.path.isdir(folder):
            manifest = (read_json(os.path.join(self.root, sha256 + ".json")) or {}).get("manifest")
            if isinstance(manifest, dict):
                parsed = parse_manifest(manifest)
                return os.path.join(folder, parsed.model), parsed.data_files()
        return os.path.join(self.root, sha256 + ".onnx"), []

    def meta(self, sha256: str) -> Optional[Dict[str, Any]]:
        if not os.path.exists(self._stored_path(sha256)):
            return None
        return read_json(os.path.join(self.root, sha256 + ".json"))

    def receive(self, read: Callable[[int], bytes], length: int) -> Tuple[str, str]:
        """Stream ``length`` bytes from ``read`` into a temporary file inside the store (same
        filesystem as the target), hashing as they come: never the whole body in memory.
        Returns (path, sha256); raises EOFError if the stream ends or stalls early, OSError if
        the disk refuses the bytes."""
        handle, tmp = tempfile.mkstemp(dir=self.root, prefix=UPLOAD_PREFIX, suffix=".onnx")
        digest = hashlib.sha256()
        try:
            with os.fdopen(handle, "wb") as out:
                _copy(read, out, length, digest)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp, digest.hexdigest()

    def receive_files(self, read: Callable[[int], bytes], manifest: Manifest) -> str:
        """Stream a manifest's files, in its order, into a temporary folder inside the store,
        each checked against its sha256 as it arrives (FileMismatch naming it). Files are
        created new, never through a link; returns the folder."""
        tmp = tempfile.mkdtemp(dir=self.root, prefix=UPLOAD_PREFIX, suffix=BUNDLE_SUFFIX)
        try:
            for entry in manifest.files:
                target = os.path.join(tmp, *entry.path.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                digest = hashlib.sha256()
                with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                    _copy(read, out, entry.size, digest)
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != entry.sha256:
                    raise FileMismatch("file %r hashes to %s but the manifest says %s"
                                       % (entry.path, digest.hexdigest(), entry.sha256))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def commit(self, tmp: str, sha256: str, meta: Dict[str, Any],
               manifest: Optional[Manifest] = None) -> Dict[str, Any]:
        """Store an upload that passed its checks: a file, or with ``manifest`` a folder."""
        size = manifest.total_bytes if manifest is not None else os.path.getsize(tmp)
        meta = dict(meta, sha256=sha256, size_bytes=size, stored_unix_time=time.time())
        if manifest is not None:
            meta["manifest"] = manifest.to_dict()
        write_json_atomic(os.path.join(self.root, sha256 + ".json"), meta)
        if manifest is None:
            os.replace(tmp, self.path(sha256))
        elif not os.path.isdir(self.folder(sha256)):  # else the same files arrived meanwhile
            os.rename(tmp, self.folder(sha256))
        return meta


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



class JobStore:
    """One folder per job: request.json, state.json, result.json (written by the worker), and
    fetched.json once a client has been sent the finished record.

    Finished folders are a bounded history (``prune``): only jobs whose finished record was
    fetched are ever removed, so a controller that was away (killed, disconnected) still
    collects what it submitted, after an agent restart too (fetched.json is on disk).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):  # removals a kill cut short
            if name.startswith(REMOVED_PREFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def create(self, job_id: str, request: Dict[str, Any]) -> Dict[str, Any]:
        os.makedirs(self.job_dir(job_id))
        write_json_atomic(os.path.join(self.job_dir(job_id), "request.json"), request)
        return self.set_state(job_id, JobState.QUEUED)

    def request(self, job_id: str) -> Any:
        return read_json(os.path.join(self.job_dir(job_id), "request.json"))

    def set_state(self, job_id: str, state: JobState, **extra: Any) -> Dict[str, Any]:
        record = {"job_id": job_id, "state": JobState(state).value,
                  "updated_unix_time": time.time()}
        record.update(extra)
        write_json_atomic(os.path.join(self.job_dir(job_id), "state.json"), record)
        return record

    def set_worker(self, job_id: str, pid: int, start_ticks: Optional[int]) -> None:
        """Which process measures the job: a restarted agent kills it if it still runs."""
        write_json_atomic(os.path.join(self.job_dir(job_id), "worker.json"),
                          {"pid": pid, "start_ticks": start_ticks})

    def worker(self, job_id: str) -> Optional[Dict[str, Any]]:
        return read_json(os.path.join(self.job_dir(job_id), "worker.json"))

    def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        state = read_json(os.path.join(self.job_dir(job_id), "state.json"))
        if state is None:
            return None
        if state.get("state") == JobState.DONE:
            state["measurement"] = read_json(os.path.join(self.job_dir(job_id), "result.json"))
        return state

    def all_ids(self) -> List[str]:
        entries = []
        for name in os.listdir(self.root):
            if name.startswith("."):
                continue
            try:
                if os.path.exists(os.path.join(self.root, name, "state.json")):
                    entries.append((os.path.getmtime(os.path.join(self.root, name,
                                                                  "request.json")), name))
            except OSError:  # removed meanwhile
                continue
        return [name for _, name in sorted(entries)]

    def mark_fetched(self, job_id: str) -> None:
        """A client was sent this job's finished record in full: from now on the folder may
        leave the history."""
        path = os.path.join(self.job_dir(job_id), "fetched.json")
        if not os.path.exists(path) and os.path.isdir(self.job_dir(job_id)):
            write_json_atomic(path, {"fetched_unix_time": time.time()})

    def fetched(self, job_id: str) -> bool:
        return os.path.exists(os.path.join(self.job_dir(job_id), "fetched.json"))

    def prune(self, finished_states: Set[str], max_count: int, max_age_s: Optional[float],
              now: Optional[float] = None) -> List[str]:
        """Remove the folders of fetched finished jobs, oldest first, while more than
        ``max_count`` finished jobs are kept or while they finished over ``max_age_s`` ago.
        A job not finished, or whose result no client has fetched, is never removed."""
        now = time.time() if now is None else now
        finished = []
        for job_id in self.all_ids():
            record = read_json(os.path.join(self.job_dir(job_id), "state.json")) or {}
            if record.get("state") in finished_states:
                finished.append((float(record.get("updated_unix_time") or 0.0), job_id))
        finished.sort()
        kept, removed = len(finished), []
        for finished_at, job_id in finished:
            too_many = kept > max_count
            too_old = max_age_s is not None and now - finished_at > max_age_s
            if not (too_many or too_old) or not self.fetched(job_id):
                continue
            # renamed first: a kill mid-removal leaves no half folder that looks like a job
            doomed = os.path.join(self.root, REMOVED_PREFIX + job_id)
            try:
                os.replace(self.job_dir(job_id), doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            kept -= 1
            removed.append(job_id)
        return removed
