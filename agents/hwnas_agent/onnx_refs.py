"""Every file an ONNX model asks to read, checked before any runtime opens the model.

A TensorProto whose ``data_location`` is EXTERNAL keeps its bytes in another file named by its
``external_data`` entries (location, offset, length), relative to the model's folder; an
EPContext node with ``embed_mode = 0`` names a context binary file. onnxruntime 1.14-1.16
opened whatever path it was given (``../token``), and a runtime's own checks vary with its
version: the agent checks every reference itself (found by onnx_wire.py, which reads the
protobuf without the onnx package). A model of several files (manifest.py) may read the other
files of its manifest, nothing else: not the token, agent.json, nor another model.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Collection, List, Optional

from hwnas_agent.onnx_wire import MalformedModel, ModelRefused, Reference, external_references

__all__ = ["MalformedModel", "ModelRefused", "Reference", "check_external_data",
           "external_references"]

# onnxruntime reads "location = */_ORT_MEM_ADDR_/*" as "offset is a memory address"
ORT_MEMORY_ADDRESS_TAG = "*/_ORT_MEM_ADDR_/*"
_NUMBER = re.compile(r"^[0-9]{1,19}$")
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_external_data(model_path: str, data_files: Optional[Collection[str]] = None
                        ) -> List[Reference]:
    """Refuse (ModelRefused, one message naming the tensor and the location) a model that reads
    any file but its own: every reference must be relative, stay inside the model's folder (no
    '..', no symbolic link), name a regular file and ask for bytes within its size. With
    ``data_files`` (relative paths), only those files are the model's; ``()`` for a model stored
    as one file, which reads no other. Returns the references, all allowed."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(model_path)))
    allowed = None if data_files is None else {os.path.normpath(p) for p in data_files}
    references = external_references(model_path)
    for reference in references:
        problem = _problem(reference, folder, allowed)
        if problem:
            raise ModelRefused("%s reads %s%s" % (
                reference.what, "external data from %r" % reference.location
                if reference.location is not None else "external data", problem))
    return references


def _problem(reference: Reference, folder: str, allowed: Optional[Collection[str]]) -> str:
    """Why the reference is refused, as the end of a sentence; '' if it is allowed."""
    location = reference.location
    if reference.repeated_keys:
        return ", but names %s more than once" % ", ".join(sorted(set(reference.repeated_keys)))
    if location is None:
        return " without saying where (no 'location')"
    if location == ORT_MEMORY_ADDRESS_TAG:
        return ", onnxruntime's tag for reading process memory"
    if "\0" in location:
        return ", which holds a NUL byte"
    if location.startswith(("/", "\\")) or _DRIVE.match(location):
        return ", an absolute path; only paths inside the model's folder are allowed"
    if "\\" in location:
        return ", which holds a backslash (a Windows path separator)"
    if ".." in location.split("/"):
        return ", which climbs out of the model's folder ('..')"
    relative = os.path.normpath(location)
    if allowed is not None and relative not in allowed:
        if not allowed:
            return (", which is not part of the model: a model stored as one file reads no "
                    "other")
        return ", which is not one of the model's files"
    path = folder
    for part in relative.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            return ", a symbolic link (%r)" % os.path.relpath(path, folder)
    if os.path.commonpath([folder, os.path.realpath(path)]) != folder:
        return ", which lies outside the model's folder"
    try:
        info = os.stat(path)
    except OSError:
        return ", which does not exist in the model's folder"
    if not stat.S_ISREG(info.st_mode):
        return ", which is not a regular file"
    if reference.whole_file:
        return ""
    numbers = []
    for key, text in (("offset", reference.offset), ("length", reference.length)):
        if text is not None and not _NUMBER.match(text):
            return ", with %s %r, not a number of bytes" % (key, text)
        numbers.append(int(text) if text is not None else None)
    offset, length = numbers[0] or 0, numbers[1]
    if length is None:
        length = reference.nbytes
        if length is None:
            return ", with no length, and its data type's size is unknown"
    if offset + length > info.st_size:
        return (", asking for bytes %d to %d of a file of %d bytes"
                % (offset, offset + length, info.st_size))
    return ""
