"""Checkpoint storage that may be remote (s3://, gs://...): what a multi-node Ray cluster shares.

In a cluster each Ray pod has its own disk, so whatever the driver must read after a run that a worker wrote
(the final and best models) goes through the job's storage URI, not a local path. pyarrow's filesystems are
what Ray Train itself uses for storage_path, so the same URIs, credentials and endpoint settings
(AWS_ENDPOINT_URL for an S3-compatible server) apply.
"""

from __future__ import annotations

import os


def is_remote(path: str) -> bool:
    """A URI that pyarrow opens (s3://, gs://, file://...); pvc://CLAIM/PATH is a mount on every pod."""
    return "://" in path and not path.startswith("pvc://")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_remote(root) else os.path.join(root, *parts)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    return filesystem.get_file_info(inner).type != fs.FileType.NotFound


def upload_dir(local: str, uri: str) -> None:
    """Copy a local directory to `uri` (replacing what is there)."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(inner).type != fs.FileType.NotFound:
        filesystem.delete_dir(inner)
    fs.copy_files(local, inner, source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)


def download_dir(uri: str, local: str) -> bool:
    """Copy `uri` into a new local directory; False when there is nothing at `uri`."""
    from pyarrow import fs

    if not exists(uri):
        return False
    filesystem, inner = fs.FileSystem.from_uri(uri)
    os.makedirs(local, exist_ok=True)
    fs.copy_files(inner, local, source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return True
