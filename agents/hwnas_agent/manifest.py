"""A model made of several files (ONNX with external data, a TensorRT plan, an LLM folder):
a manifest of relative paths, each with its sha256 and size, and the file a runtime opens.

    {"model": "net.onnx",
     "files": [{"path": "net.onnx", "sha256": "...", "size": 1234},
               {"path": "net.onnx.data", "sha256": "...", "size": 56789}]}

The model is addressed by the sha256 of the manifest's canonical JSON (files sorted by path,
keys sorted, no spaces, ASCII): the same files give the same address on both sides. Paths are
confined to the model's folder: relative, '/'-separated, no '..', '.' or empty part, no part
starting with '.', a bounded alphabet, length, depth and count, no duplicate and no file that
is also another's folder. Standard library only: the controller builds manifests with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from typing import Any, Dict, List, NamedTuple, Optional

MAX_FILES = 256
MAX_PATH_CHARS = 255
MAX_DEPTH = 8  # folders inside the model's folder
MAX_MANIFEST_BYTES = 64 * 1024
_PART = re.compile(r"^[A-Za-z0-9_+=@-][A-Za-z0-9_.+=@-]{0,127}$")
_KEYS = ("model", "files")
_FILE_KEYS = ("path", "sha256", "size")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest the agent refuses; the message names the entry and what is allowed."""


class FileEntry(NamedTuple):
    path: str
    sha256: str
    size: int


class Manifest(NamedTuple):
    model: str  # the file a runtime opens, one of the files
    files: List[FileEntry]  # sorted by path

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "files": [entry._asdict() for entry in self.files]}

    def canonical(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def data_files(self) -> List[str]:
        """The other files, relative to the model's own folder, as its external-data
        references name them; a file outside that folder cannot be one of them."""
        folder = os.path.dirname(self.model)
        found = []
        for entry in self.files:
            if entry.path == self.model:
                continue
            if not folder:
                found.append(entry.path)
            elif entry.path.startswith(folder + "/"):
                found.append(entry.path[len(folder) + 1:])
        return found


def check_path(path: Any, where: str = "manifest") -> str:
    """The path if it stays inside the model's folder, else ManifestError saying why."""
    if not isinstance(path, str) or not path:
        raise ManifestError("%s: a path must be a non-empty string, not %r" % (where, path))
    if len(path) > MAX_PATH_CHARS:
        raise ManifestError("%s: path %r is over %d characters"
                            % (where, path[:80], MAX_PATH_CHARS))
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ManifestError("%s: path %r is absolute or not '/'-separated; paths are relative "
                            "to the model's folder" % (where, path))
    parts = path.split("/")
    if ".." in parts:
        raise ManifestError("%s: path %r climbs out of the model's folder ('..')" % (where, path))
    if len(parts) > MAX_DEPTH + 1:
        raise ManifestError("%s: path %r is over %d folders deep" % (where, path, MAX_DEPTH))
    for part in parts:
        if not _PART.match(part):
            raise ManifestError("%s: path %r has the part %r; a part is 1-128 letters, digits "
                                "or _ . + = @ - and does not start with '.'" % (where, path, part))
    return path


def parse(data: Any, max_bytes: Optional[int] = None) -> Manifest:
    """A Manifest from its JSON object; ManifestError naming the entry at fault."""
    if not isinstance(data, dict) or sorted(data) != sorted(_KEYS):
        raise ManifestError("a manifest is an object with exactly the keys %s" % ", ".join(_KEYS))
    files = data["files"]
    if not isinstance(files, list) or not files:
        raise ManifestError("manifest 'files' must be a non-empty list")
    if len(files) > MAX_FILES:
        raise ManifestError("manifest 'files' lists %d files; at most %d" % (len(files), MAX_FILES))
    entries: Dict[str, FileEntry] = {}
    for index, item in enumerate(files):
        where = "manifest files[%d]" % index
        if not isinstance(item, dict) or sorted(item) != sorted(_FILE_KEYS):
            raise ManifestError("%s must be an object with exactly the keys %s"
                                % (where, ", ".join(_FILE_KEYS)))
        path = check_path(item["path"], where)
        if path in entries:
            raise ManifestError("%s: path %r is listed twice" % (where, path))
        if not isinstance(item["sha256"], str) or not _SHA256.match(item["sha256"]):
            raise ManifestError("%s: sha256 must be 64 lowercase hex digits" % where)
        size = item["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError("%s: size must be a whole number of bytes" % where)
        entries[path] = FileEntry(path, item["sha256"], size)
    for path in entries:  # a file cannot also be a folder of another
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in entries:
                raise ManifestError("manifest: %r is a file and also the folder of %r"
                                    % ("/".join(parts[:depth]), path))
    if data["model"] not in entries:
        raise ManifestError("manifest 'model' = %r is not one of its files" % (data["model"],))
    manifest = Manifest(data["model"], [entries[p] for p in sorted(entries)])
    if max_bytes is not None and manifest.total_bytes > max_bytes:
        raise ManifestError("the manifest's files hold %d bytes; at most %d allowed"
                            % (manifest.total_bytes, max_bytes))
    return manifest


def from_folder(folder: str, model: str) -> Manifest:
    """The manifest of every file under ``folder`` (the controller's side); ManifestError for a
    symbolic link or anything that is not a regular file, which a manifest cannot carry."""
    entries = []
    for root, folders, names in os.walk(folder, followlinks=False):
        for name in sorted(folders + names):
            full = os.path.join(root, name)
            relative = os.path.relpath(full, folder).replace(os.sep, "/")
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                raise ManifestError("%s is a symbolic link; a model's files must be its own "
                                    "regular files" % full)
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise ManifestError("%s is not a regular file" % full)
            digest = hashlib.sha256()
            with open(full, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            entries.append({"path": relative, "sha256": digest.hexdigest(), "size": info.st_size})
    return parse({"model": model, "files": entries})
