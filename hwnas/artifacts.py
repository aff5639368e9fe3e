"""Where kept bytes live: an Optuna artifact store every controller, worker, `report`, `export`
and optuna-dashboard can read.

    file:///shared/path/hwnas-artifacts   a folder (a shared file system for several machines)
    s3://bucket/prefix                     an S3-compatible store (needs boto3; endpoint and
                                           credentials from the usual AWS environment)

Artifacts are attached to the trial (ONNX bytes, model card) or the study (the parent's
weights) through Optuna's artifact API and found again by file name; their content is
checked against the sha256 the study recorded before anything uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.artifacts import upload_artifact as _upload

from hwnas.errors import ConfigError, ExportError, excerpt
from hwnas.redaction import redact


def open_store(url: str) -> Any:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        path.mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(path)
    if parsed.scheme == "s3":
        try:
            import boto3
        except ImportError:
            raise ConfigError(f"artifact store {redact(url)}: an s3:// store needs boto3 "
                              f"(pip install boto3)") from None
        from optuna.artifacts import Boto3ArtifactStore

        client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        return Boto3ArtifactStore(parsed.netloc, client=client) if not parsed.path.strip("/") \
            else _PrefixedStore(Boto3ArtifactStore(parsed.netloc, client=client),
                                parsed.path.strip("/"))
    raise ConfigError(f"artifact store {excerpt(redact(url))}: write file:///absolute/path or s3://bucket/prefix")


class _PrefixedStore:
    """An artifact store whose ids are kept under a key prefix (s3://bucket/prefix)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(f"{self.prefix}/{artifact_id}")

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(f"{self.prefix}/{artifact_id}", content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(f"{self.prefix}/{artifact_id}")


def upload(store: Any, study_or_trial: Any, source: Path, filename: str,
           storage: Any = None) -> str:
    """Upload ``source`` under ``filename`` (the name it is found by); returns the id."""
    with tempfile.TemporaryDirectory(prefix="hwnas-upload-") as folder:
        named = Path(folder) / filename
        try:
            os.link(source, named)
        except OSError:
            shutil.copyfile(source, named)
        return _upload(artifact_store=store, file_path=str(named), study_or_trial=study_or_trial,
                       storage=storage)


def find(study_or_trial: Any, filename: str, storage: Any = None) -> str | None:
    """The id of the newest artifact of that file name attached to the study or trial."""
    found = [m.artifact_id for m in get_all_artifact_meta(study_or_trial, storage=storage)
             if m.filename == filename]
    return found[-1] if found else None


def fetch(store: Any, artifact_id: str, target: Path, sha256: str | None = None) -> Path:
    """Download an artifact to ``target``, verified against ``sha256`` when given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(tmp))
    except Exception as exc:  # the store's own error types differ (OSError, botocore, ...)
        tmp.unlink(missing_ok=True)
        raise ExportError(f"artifact {artifact_id} could not be read from the artifact store: "
                          f"{exc}") from None
    except BaseException:  # interrupted (Ctrl-C, `hwnas export` on SIGTERM): no stray part
        tmp.unlink(missing_ok=True)
        raise
    if sha256 is not None:
        actual = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if actual != sha256:
            tmp.unlink()
            raise ExportError(f"artifact {artifact_id} hashes to {actual}, not the {sha256} the "
                              f"study recorded: the store was altered")
    tmp.replace(target)
    return target
