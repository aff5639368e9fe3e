"""On-disk state of the agent: the content-addressed model store and persisted jobs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Set, Tuple


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


class ModelStore:
    """Models stored as ``<sha256>.onnx`` with ``<sha256>.json`` (their signature).

    With ``max_bytes``, storing a model evicts the least recently used others until the
    store fits; models in use by a queued or running job (``protected``) are never evicted.
    """

    def __init__(self, root: str, max_bytes: Optional[int] = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        os.makedirs(root, exist_ok=True)

    def touch(self, sha256: str) -> None:
        """Mark as used now (the model file's mtime is its last use)."""
        try:
            os.utime(self.path(sha256))
        except OSError:
            pass

    def stored(self) -> List[Tuple[float, int, str]]:
        entries = []
        for name in os.listdir(self.root):
            if name.endswith(".onnx") and not name.startswith("."):
                stat = os.stat(os.path.join(self.root, name))
                entries.append((stat.st_mtime, stat.st_size, name[:-len(".onnx")]))
        return sorted(entries)

    def evict(self, protected: Set[str]) -> List[str]:
        if self.max_bytes is None:
            return []
        entries = self.stored()
        total = sum(size for _, size, _ in entries)
        evicted = []
        for _, size, sha256 in entries:
            if total <= self.max_bytes:
                break
            if sha256 in protected:
                continue
            for suffix in (".onnx", ".json"):
                try:
                    os.unlink(os.path.join(self.root, sha256 + suffix))
                except FileNotFoundError:
                    pass
            total -= size
            evicted.append(sha256)
        return evicted

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256 + ".onnx")

    def meta(self, sha256: str) -> Optional[Dict[str, Any]]:
        if not os.path.exists(self.path(sha256)):
            return None
        return read_json(os.path.join(self.root, sha256 + ".json"))

    def stage(self, data: bytes) -> str:
        """Write bytes to a temporary file inside the store (same filesystem as the target)."""
        handle, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".onnx")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    def commit(self, tmp: str, sha256: str, meta: Dict[str, Any]) -> Dict[str, Any]:
        meta = dict(meta, sha256=sha256, size_bytes=os.path.getsize(tmp), stored_unix_time=time.time())
        write_json_atomic(os.path.join(self.root, sha256 + ".json"), meta)
        os.replace(tmp, self.path(sha256))
        return meta


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class JobStore:
    """One folder per job: request.json, state.json, result.json (written by the worker)."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def create(self, job_id: str, request: Dict[str, Any]) -> Dict[str, Any]:
        os.makedirs(self.job_dir(job_id))
        write_json_atomic(os.path.join(self.job_dir(job_id), "request.json"), request)
        return self.set_state(job_id, "queued")

    def request(self, job_id: str) -> Any:
        return read_json(os.path.join(self.job_dir(job_id), "request.json"))

    def set_state(self, job_id: str, state: str, **extra: Any) -> Dict[str, Any]:
        record = {"job_id": job_id, "state": state, "updated_unix_time": time.time()}
        record.update(extra)
        write_json_atomic(os.path.join(self.job_dir(job_id), "state.json"), record)
        return record

    def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        state = read_json(os.path.join(self.job_dir(job_id), "state.json"))
        if state is None:
            return None
        if state.get("state") == "done":
            state["measurement"] = read_json(os.path.join(self.job_dir(job_id), "result.json"))
        return state

    def all_ids(self) -> List[str]:
        entries = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name, "state.json")
            if os.path.exists(path):
                entries.append((os.path.getmtime(os.path.join(self.root, name, "request.json")), name))
        return [name for _, name in sorted(entries)]
