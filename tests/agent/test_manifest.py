"""A model of several files: the manifest (paths confined to the model's folder, bounded,
addressed by the canonical JSON's sha256) and the store that keeps such a model as a folder."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from hwnas_agent import manifest
from hwnas_agent.manifest import ManifestError, parse
from hwnas_agent.storage import FileMismatch, ModelStore

SHA_A = "a" * 64


def entry(path, sha256=SHA_A, size=1):
    return {"path": path, "sha256": sha256, "size": size}


def of(*paths, model=None):
    return {"model": model or paths[0], "files": [entry(p) for p in paths]}


def test_the_address_is_the_canonical_json_whatever_the_order():
    one = parse({"model": "net.onnx", "files": [entry("net.onnx"), entry("net.onnx.data")]})
    two = parse({"files": [entry("net.onnx.data"), entry("net.onnx")], "model": "net.onnx"})
    assert one.sha256 == two.sha256 == hashlib.sha256(one.canonical()).hexdigest()
    assert one.canonical().startswith(b'{"files":[{"path":"net.onnx","sha256":')
    assert parse(of("net.onnx", "other.data")).sha256 != one.sha256


@pytest.mark.parametrize("data, message", [
    (of("../token"), "climbs out of the model's folder"),
    (of("a/../../token"), "climbs out"),
    (of("/etc/passwd"), "is absolute"),
    (of("C:/x.onnx"), "is absolute"),
    (of("sub\\x.onnx"), "not '/'-separated"),
    (of(".hidden"), "does not start with '.'"),
    (of("a//b"), "has the part ''"),
    (of("./net.onnx"), "has the part '.'"),
    (of("net\x00.onnx"), "has the part"),
    (of("x" * 300), "over 255 characters"),
    (of("/".join(["d"] * 10) + "/m.onnx"), "folders deep"),
    (of("net.onnx", "net.onnx"), "listed twice"),
    (of("weights", "weights/w.bin"), "is a file and also the folder"),
    (of("net.onnx", model="other.onnx"), "is not one of its files"),
    ({"model": "m", "files": [entry("m%d" % i) for i in range(manifest.MAX_FILES + 1)]},
     "at most %d" % manifest.MAX_FILES),
    ({"model": "m", "files": []}, "non-empty list"),
    ({"model": "m", "files": [entry("m", sha256="ABC")]}, "64 lowercase hex"),
    ({"model": "m", "files": [entry("m", size=-1)]}, "whole number of bytes"),
    ({"model": "m", "files": [entry("m", size=True)]}, "whole number of bytes"),
    ({"model": "m", "files": [dict(entry("m"), mode="0755")]}, "exactly the keys"),
    ({"model": "m", "files": [entry("m")], "run": "sh"}, "exactly the keys"),
])
def test_hostile_manifests_are_refused_naming_why(data, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse(data)


def test_the_total_size_is_bounded():
    data = {"model": "m", "files": [entry("m", size=600), entry("d", size=600)]}
    assert parse(data, max_bytes=1200).total_bytes == 1200
    with pytest.raises(ManifestError, match="1200 bytes; at most 1000"):
        parse(data, max_bytes=1000)


def test_data_files_are_named_from_the_models_folder():
    found = parse({"model": "onnx/net.onnx",
                   "files": [entry("onnx/net.onnx"), entry("onnx/w/a.bin"), entry("top.bin")]})
    # a file outside the model's own folder is not one it can name (it would take '..')
    assert found.data_files() == ["w/a.bin"]


def test_from_folder_hashes_every_file_and_refuses_links(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "net.onnx").write_bytes(b"model")
    (tmp_path / "m" / "w").mkdir()
    (tmp_path / "m" / "w" / "a.bin").write_bytes(b"weights")
    found = manifest.from_folder(str(tmp_path / "m"), "net.onnx")
    assert [(e.path, e.size) for e in found.files] == [("net.onnx", 5), ("w/a.bin", 7)]
    assert found.files[1].sha256 == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "secret").write_bytes(b"token")
    os.symlink(tmp_path / "secret", tmp_path / "m" / "w" / "b.bin")
    with pytest.raises(ManifestError, match="b.bin is a symbolic link"):
        manifest.from_folder(str(tmp_path / "m"), "net.onnx")


# -- the store --------------------------------------------------------------------------------

def bundle(files: dict, model: str):
    found = parse({"model": model, "files": [
        {"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
        for p, b in files.items()]})
    body = b"".join(files[e.path] for e in found.files)
    return found, io.BytesIO(body).read


def test_the_store_keeps_a_verified_folder_and_evicts_it_whole(tmp_path):
    store = ModelStore(str(tmp_path / "models"), max_bytes=100)
    found, read = bundle({"net.onnx": b"m" * 30, "w/a.bin": b"w" * 30}, "net.onnx")
    tmp = store.receive_files(read, found)
    meta = store.commit(tmp, found.sha256, {"inputs": []}, found)
    assert meta["size_bytes"] == 60 and meta["manifest"] == found.to_dict()
    path, data_files = store.files(found.sha256)
    assert path == os.path.join(store.folder(found.sha256), "net.onnx")
    assert data_files == ["w/a.bin"]
    assert sorted(os.listdir(store.folder(found.sha256))) == ["net.onnx", "w"]
    assert store.stored() == [(os.stat(store.folder(found.sha256)).st_mtime, 60, found.sha256)]
    assert store.evict(set(), room_for=50) == [found.sha256]
    assert store.meta(found.sha256) is None and os.listdir(store.root) == []


def test_a_file_that_does_not_match_its_sha256_leaves_nothing(tmp_path):
    store = ModelStore(str(tmp_path / "models"))
    found, _ = bundle({"net.onnx": b"model", "w.bin": b"weights"}, "net.onnx")
    with pytest.raises(FileMismatch, match="'w.bin' hashes to"):
        store.receive_files(io.BytesIO(b"model" + b"WEIGHTS").read, found)
    with pytest.raises(EOFError, match="expected 7 bytes, got 3"):
        store.receive_files(io.BytesIO(b"model" + b"wei").read, found)
    assert os.listdir(store.root) == []


def test_uploads_cut_short_by_a_kill_are_removed_when_the_store_opens(tmp_path):
    root = tmp_path / "models"
    (root / ".upload-x.d" / "w").mkdir(parents=True)
    (root / ".upload-x.d" / "w" / "a.bin").write_bytes(b"half")
    (root / ".removed-y.d").mkdir()
    store = ModelStore(str(root))
    assert store.stale_removed == 2 and os.listdir(root) == []


def test_manifest_json_round_trips():
    found = parse(of("net.onnx", "net.onnx.data"))
    assert parse(json.loads(found.canonical())) == found
