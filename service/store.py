"""Fetch an index folder from S3 into a local cache, checking every file against the manifest's sha256."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from runtime import artifacts, storage
from runtime.layout import MANIFEST, S3_POINTER

log = logging.getLogger(__name__)
KEEP_VERSIONS = 3  # cached index versions kept per S3 prefix: the one being loaded and the two before it


def fetch_s3(uri: str, cache_dir: Path) -> Path:
    """Download the index at `uri` (a version folder, or a prefix whose CURRENT object names one) and verify it.

    Files already in the cache with the right sha256 are not downloaded again. Nothing is returned unless
    every file matches the manifest.

    Raises:
        ArtifactError: no manifest, or a file whose size or sha256 differs from the manifest (tampering).
    """
    from botocore.exceptions import ClientError

    bucket, prefix = storage.split_s3(uri.rstrip("/"))
    client = storage.s3_client()
    try:
        pointer = client.get_object(Bucket=bucket, Key=f"{prefix}/{S3_POINTER}")["Body"].read().decode().strip()
        prefix = f"{prefix}/{pointer}"
    except ClientError:
        pass  # no pointer: the URI names a version folder itself
    try:
        manifest_bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    except ClientError as exc:
        raise artifacts.ArtifactError(f"no {MANIFEST} at s3://{bucket}/{prefix}: {exc}") from None
    manifest = json.loads(manifest_bytes)
    local = Path(cache_dir) / bucket / prefix
    for rel, entry in manifest.get("files", {}).items():
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise artifacts.ArtifactError(f"manifest at s3://{bucket}/{prefix} lists an unsafe path {rel!r}")
        target = local / rel
        if target.is_file() and target.stat().st_size == entry["bytes"] \
                and storage.sha256_file(target) == entry["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        client.download_file(bucket, f"{prefix}/{rel}", str(tmp))
        if storage.sha256_file(tmp) != entry["sha256"]:
            tmp.unlink()
            raise artifacts.ArtifactError(f"s3://{bucket}/{prefix}/{rel} does not match its sha256 in the manifest; "
                                          "refusing to load these artifacts")
        os.replace(tmp, target)
    storage.atomic_write_bytes(local / MANIFEST, manifest_bytes)
    log.info("fetched %s (%d files) into %s", uri, len(manifest.get("files", {})), local)
    prune_cache(local)
    return local


def prune_cache(current: Path, keep: int = KEEP_VERSIONS) -> list[Path]:
    """Delete cached versions beside `current` but the `keep` most recently fetched (current among them).

    Each catalog publish adds a full version to every instance's cache; without pruning the disk fills. A few are
    kept because another worker of the instance may still be serving (memory-mapping) an older one.

    Returns:
        The folders removed.
    """
    versions = [p for p in current.parent.iterdir() if p.is_dir() and (p / MANIFEST).is_file() and p != current]
    versions.sort(key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)
    removed = versions[keep - 1:]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s from the artifacts cache (keeping the %d newest versions)", folder, keep)
    return removed


def local_folder(location: str, cache_dir: Path) -> Path:
    """Return a local, verified-on-load folder for ARTIFACTS (a path, or an s3:// URI fetched first)."""
    if location.startswith("s3://"):
        return fetch_s3(location, cache_dir)
    return artifacts.resolve_index(Path(location))
