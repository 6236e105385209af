"""Fetch an index folder from S3 into a local cache, checking every file against the manifest's sha256."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime import artifacts, storage, versions
from runtime.layout import BLOB_LAYOUT, CACHE_BLOBS, MANIFEST

log = logging.getLogger(__name__)
FETCH_THREADS = 8  # files downloaded (or hashed) at once
RANGED_ABOVE = 8 << 20  # bytes from which a file is downloaded by boto3's transfer manager, in ranges
BLOB_GRACE_S = 600.0  # a stored blob no version links to is deleted only this long after it was written
SERVING_DIR = ".serving"  # in the cache: one file per serving process, the version folders it has open


def fetch_s3(uri: str, cache_dir: Path) -> Path:
    """Download the index at `uri` (a version folder, or a prefix whose CURRENT object names one) and verify it;
    return its local folder (`fetch_s3_hashed` also says which folders it hashed)."""
    return fetch_s3_hashed(uri, cache_dir)[0]


def fetch_s3_hashed(uri: str, cache_dir: Path) -> tuple[Path, frozenset[Path]]:
    """Download the index at `uri` (a version folder, or a prefix whose CURRENT object names one) and verify it.

    Every file is hashed once: a file already in the version's folder, or in the instance's store of files by
    content (`CACHE_BLOBS`, filled by every version fetched before), is linked rather than downloaded when its
    sha256 is right; a file downloaded is hashed as it lands. A version published as blobs (`deploy`) is read from
    s3://.../blobs/<sha256>, one published file by file from its own folder. A delta version's base (the full
    version beside it that its manifest names) is fetched too, into the folder beside it. Nothing is returned
    unless every file matches its manifest.

    Returns:
        The version's local folder, and the folders whose every file this call hashed (a loader need not hash
        them again).

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
    local, manifest, hashed = _fetch_version(client, bucket, prefix, Path(cache_dir))
    done = {local} if hashed else set()
    base = (manifest.get("delta") or {}).get("base")
    if base:
        try:
            base_prefix = versions.version_key(prefix.rpartition("/")[0], base)
        except artifacts.ArtifactError:
            raise artifacts.ArtifactError(f"manifest at s3://{bucket}/{prefix} names an unsafe base {base!r}") from None
        base_local, _, base_hashed = _fetch_version(client, bucket, base_prefix, Path(cache_dir), trust_cached=True)
        done |= {base_local} if base_hashed else set()
    prune_cache(local, keep_also=(base,) if base else (), in_use=serving(Path(cache_dir)))
    return local, frozenset(done)


def _fetch_version(client, bucket: str, prefix: str, cache_dir: Path, trust_cached: bool = False
                   ) -> tuple[Path, dict, bool]:
    """Fetch one version folder's files (linked from the store of blobs, or downloaded), then its manifest; return
    the folder, the manifest and whether every file was hashed.

    With `trust_cached` (a delta's base), a cached copy whose manifest is the same is taken as it is: the manifest
    is written last, so the files were complete and checked then, and the searcher checks them again when it
    loads the base itself; a worker already serving the base must not hash gigabytes for a delta of kilobytes.
    """
    where = f"s3://{bucket}/{prefix}"
    # S3's errors go up as they are, retried by the caller: only what the bytes say can refuse a version
    response = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")
    manifest_bytes = response["Body"].read()
    manifest = artifacts.parse_manifest(manifest_bytes, where)
    key, value = BLOB_LAYOUT
    in_blobs = (response.get("Metadata") or {}).get(key) == value
    local = cache_dir / bucket / prefix
    if trust_cached and (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == manifest_bytes:
        return local, manifest, False
    blobs = local.parent / CACHE_BLOBS
    plan = []
    for rel, entry in manifest["files"].items():
        try:
            plan.append((rel, storage.inside(local, rel, f"the manifest at {where} lists"),
                         versions.check_digest(entry["sha256"]), entry))
        except storage.UnsafePathError as exc:
            raise artifacts.ArtifactError(str(exc)) from None
    once = {sha: threading.Lock() for _, _, sha, _ in plan}  # two names of one content: one download

    def place(rel: str, target: Path, sha: str, entry: dict) -> int:
        if _holds(target, entry):
            return 0
        blob, fetched = blobs / sha, 0
        with once[sha]:
            if not _holds(blob, entry):
                source = versions.blob_key(prefix.rpartition("/")[0], sha) if in_blobs else f"{prefix}/{rel}"
                _download(client, bucket, source, blob, sha, entry["bytes"], f"{where}/{rel}")
                fetched = 1
        target.parent.mkdir(parents=True, exist_ok=True)
        link = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        link.unlink(missing_ok=True)
        storage.link_or_copy(blob, link)
        os.replace(link, target)
        return fetched

    # thousands of small files: many requests in flight at once (boto3's clients are thread-safe), each hashed
    # as it lands (hashlib lets go of the GIL)
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch") as pool:
        downloaded = sum(pool.map(lambda item: place(*item), plan))
    storage.atomic_write_bytes(local / MANIFEST, manifest_bytes)
    log.info("fetched %s (%d files, %d downloaded) into %s", where, len(manifest["files"]), downloaded, local)
    return local, manifest, True


def _holds(path: Path, entry: dict) -> bool:
    """Whether `path` is a file of the manifest entry's size and sha256 (the one hash of it in this fetch)."""
    return path.is_file() and path.stat().st_size == entry["bytes"] and storage.sha256_file(path) == entry["sha256"]


def _download(client, bucket: str, key: str, blob: Path, sha: str, size: int, what: str) -> None:
    """Download s3://bucket/key (the file `what` names, of `size` bytes) into the store of blobs as `blob`, refusing
    it unless its sha256 is `sha`. A small file is one GET (boto3's transfer manager would HEAD it first); a large
    one goes through the transfer manager, in parallel ranges."""
    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(f".{blob.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        if size < RANGED_ABOVE:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with open(tmp, "wb") as fh:
                fh.writelines(body.iter_chunks(1 << 20))
        else:
            client.download_file(bucket, key, str(tmp))
    except BaseException:  # a connection cut mid-file: the next try starts it again
        tmp.unlink(missing_ok=True)
        raise
    if storage.sha256_file(tmp) != sha:
        tmp.unlink()
        source = "" if f"s3://{bucket}/{key}" == what else f" (read from s3://{bucket}/{key})"
        raise artifacts.ArtifactError(f"{what} does not match its sha256 in the manifest{source}; refusing to load "
                                      "these artifacts")
    os.replace(tmp, blob)


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
    removed = versions.prune(current.parent, keep, protect={current.name, *keep_also, *served}, order="fetched")
    _prune_blobs(current.parent / CACHE_BLOBS)
    return removed


def _prune_blobs(blobs: Path, grace_s: float = BLOB_GRACE_S) -> int:
    """Delete the stored blobs no cached version links to any more (one link left: the store's own), except those
    written in the last `grace_s` seconds, which another worker may be about to link."""
    if not blobs.is_dir():
        return 0
    now, removed = time.time(), 0
    for blob in blobs.iterdir():
        try:
            stat = blob.stat()
        except FileNotFoundError:
            continue
        if not blob.name.startswith(".") and stat.st_nlink == 1 and now - stat.st_mtime > grace_s:
            blob.unlink(missing_ok=True)
            removed += 1
    return removed


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


def local_folder(location: str, cache_dir: Path) -> tuple[Path, frozenset[Path]]:
    """Return a local folder for ARTIFACTS (a path, or an s3:// URI fetched first), and the folders whose files
    were all hashed on the way (the loader hashes the others)."""
    if location.startswith("s3://"):
        return fetch_s3_hashed(location, cache_dir)
    return artifacts.resolve_index(Path(location)), frozenset()
