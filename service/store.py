"""Fetch an index folder from S3 into a local cache, checking every file against the manifest's sha256."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runtime import artifacts, storage, versions
from runtime.layout import MANIFEST

log = logging.getLogger(__name__)
SERVING_DIR = ".serving"  # in the cache: one file per serving process, the version folders it has open


def fetch_s3(uri: str, cache_dir: Path) -> Path:
    """Download the index at `uri` (a version folder, or a prefix whose CURRENT object names one) and verify it.

    Files already in the cache with the right sha256 are not downloaded again. A delta version's base (the full
    version beside it that its manifest names) is fetched too, into the folder beside it. Nothing is returned
    unless every file matches its manifest.

    Raises:
        ArtifactError: a manifest that is not one, a pointer, base or file name that names no possible version or
            path, or a file whose sha256 differs from the manifest (tampering): the version is refused.
        botocore's errors: S3 or the network failed, a manifest not found included (`storage.is_transient`
            says which may pass): the caller retries.
    """
    bucket, prefix = storage.split_s3(uri.rstrip("/"))
    client = storage.s3_client()
    pointer = versions.read_s3_pointer(client, bucket, prefix)
    if pointer is not None:
        prefix = versions.version_key(prefix, pointer)  # else the URI names a version folder itself
    local, manifest = _fetch_version(client, bucket, prefix, Path(cache_dir))
    base = (manifest.get("delta") or {}).get("base")
    if base:
        try:
            base_prefix = versions.version_key(prefix.rpartition("/")[0], base)
        except artifacts.ArtifactError:
            raise artifacts.ArtifactError(f"manifest at s3://{bucket}/{prefix} names an unsafe base {base!r}") from None
        _fetch_version(client, bucket, base_prefix, Path(cache_dir), trust_cached=True)
    prune_cache(local, keep_also=(base,) if base else (), in_use=serving(Path(cache_dir)))
    return local


def _fetch_version(client, bucket: str, prefix: str, cache_dir: Path, trust_cached: bool = False
                   ) -> tuple[Path, dict]:
    """Download one version folder's files (those not already cached with the right sha256), then its manifest.

    With `trust_cached` (a delta's base), a cached copy whose manifest is the same is taken as it is: the manifest
    is written last, so the files were complete and checked then, and the searcher checks them again when it
    loads the base itself; a worker already serving the base must not hash gigabytes for a delta of kilobytes.
    """
    where = f"s3://{bucket}/{prefix}"
    # S3's errors go up as they are, retried by the caller: only what the bytes say can refuse a version
    manifest_bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    manifest = artifacts.parse_manifest(manifest_bytes, where)
    local = cache_dir / bucket / prefix
    if trust_cached and (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == manifest_bytes:
        return local, manifest
    for rel, entry in manifest["files"].items():
        try:
            target = storage.inside(local, rel, f"the manifest at {where} lists")
        except storage.UnsafePathError as exc:
            raise artifacts.ArtifactError(str(exc)) from None
        if target.is_file() and target.stat().st_size == entry["bytes"] \
                and storage.sha256_file(target) == entry["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            client.download_file(bucket, f"{prefix}/{rel}", str(tmp))
        except BaseException:  # a connection cut mid-file: the next try starts it again
            tmp.unlink(missing_ok=True)
            raise
        if storage.sha256_file(tmp) != entry["sha256"]:
            tmp.unlink()
            raise artifacts.ArtifactError(f"s3://{bucket}/{prefix}/{rel} does not match its sha256 in the manifest; "
                                          "refusing to load these artifacts")
        os.replace(tmp, target)
    storage.atomic_write_bytes(local / MANIFEST, manifest_bytes)
    log.info("fetched s3://%s/%s (%d files) into %s", bucket, prefix, len(manifest["files"]), local)
    return local, manifest


def prune_cache(current: Path, keep: int = versions.KEEP_VERSIONS, keep_also: tuple[str, ...] = (),
                in_use: set[Path] = frozenset()) -> list[Path]:
    """Delete cached versions beside `current` but the `keep` most recently fetched, `current` itself, those named in
    `keep_also` (the base a delta is served over) and those `in_use` (served by a worker: `serving`), with
    `runtime.versions.prune`.

    Each catalog publish adds a version to every instance's cache; without pruning the disk fills. A few are
    kept because another worker of the instance may be loading an older one; the ones workers serve are kept
    whatever their age, as their thumbnails are read from the folder for as long as they serve it.

    Returns:
        The folders removed.
    """
    folder = current.parent.resolve()
    served = {p.name for p in (Path(f).resolve() for f in in_use) if p.parent == folder}
    return versions.prune(current.parent, keep, protect={current.name, *keep_also, *served}, order="fetched")


def mark_serving(cache_dir: Path, token: str, folders: list[Path]) -> Path:
    """Record that this process serves `folders` (a version and its base) under `token`, for `serving` to read in
    every other worker of the instance; return the record's path (`unmark_serving` removes it)."""
    record = Path(cache_dir) / SERVING_DIR / f"{os.getpid()}.{token}"
    record.parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_bytes(record, "\n".join(str(Path(f).resolve()) for f in folders).encode())
    return record


def unmark_serving(record: Path) -> None:
    """Forget a `mark_serving` record (its holder is gone)."""
    record.unlink(missing_ok=True)


def serving(cache_dir: Path) -> set[Path]:
    """The version folders that live processes serve, from their `mark_serving` records; a dead process's record
    is deleted."""
    folders: set[Path] = set()
    for record in (Path(cache_dir) / SERVING_DIR).glob("[0-9]*.*"):  # not a record being written (".name.tmp")
        pid = record.name.partition(".")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            record.unlink(missing_ok=True)
            continue
        try:
            folders.update(Path(line) for line in record.read_text().splitlines() if line)
        except FileNotFoundError:  # its holder moved on meanwhile
            continue
    return folders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def local_folder(location: str, cache_dir: Path) -> Path:
    """Return a local, verified-on-load folder for ARTIFACTS (a path, or an s3:// URI fetched first)."""
    if location.startswith("s3://"):
        return fetch_s3(location, cache_dir)
    return artifacts.resolve_index(Path(location))
