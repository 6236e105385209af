"""Index versions side by side, and the pointer to the one served: where the stages, deploy and the service agree.

A folder of versions (a data dir's `index/`, an S3 prefix, or an instance's cache of that prefix) holds one folder
per version, named when it was built, and a pointer naming the one to serve: locally the symlink `index/current`,
switched by renaming a new symlink over it; on S3 the object `CURRENT`, whose content is the version's name. The
index stage and `pipeline remove` move the local pointer, deploy and an admin reload the S3 one, and every service
worker follows whichever its ARTIFACTS names. A name read from a pointer or a manifest is checked before it becomes
a path (`check_name`).

Old versions are pruned by one rule (`prune`): keep the newest few, whatever is protected (the version served, the
versions other workers serve), and the base of every delta kept.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtime import storage
from runtime.artifacts import ArtifactError
from runtime.layout import CURRENT, INDEX_DIR, MANIFEST, S3_BLOBS, S3_POINTER

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3  # versions kept in a data dir's index/ and in an instance's cache of each S3 prefix
ORDERS = ("name", "fetched")


def check_name(name: object) -> str:
    """Return `name` if it can name a version folder beside the others: one plain path component, not hidden (a
    staging folder) and not the pointer itself.

    Raises:
        ArtifactError: anything else (`../x`, `a/b`, `.tmp-1`, `current`, ...), which must never become a path.
    """
    if not isinstance(name, str) or not name or name.startswith(".") or name in (CURRENT, S3_POINTER, S3_BLOBS) \
            or any(c in name for c in "/\\\0\n\r"):
        raise ArtifactError(f"{name!r} is not a version name")
    return name


def local_pointer(location: str | Path) -> Path | None:
    """The `index/current` symlink that a local ARTIFACTS names (itself, or inside an index folder or a data dir);
    None when it names a version folder, which nothing moves."""
    path = Path(location)
    for candidate in (path, path / CURRENT, path / INDEX_DIR / CURRENT):
        if candidate.name == CURRENT and candidate.is_symlink():
            return candidate
    return None


def point_local(index_dir: Path, version: str) -> None:
    """Switch `index_dir/current` to the version folder beside it, atomically (a new symlink renamed over the old
    one): a reader sees the old version or the new one, never none."""
    index_dir = Path(index_dir)
    tmp = index_dir / f".{CURRENT}-{check_name(version)}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    os.replace(tmp, index_dir / CURRENT)


def pointer_key(prefix: str) -> str:
    """The key of the pointer object under an S3 prefix ("" for the bucket's root)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{S3_POINTER}" if prefix else S3_POINTER


def version_key(prefix: str, version: str, rel: str = "") -> str:
    """The key of a version folder under an S3 prefix, or of a file `rel` inside it."""
    parts = [p for p in (prefix.strip("/"), check_name(version), rel) if p]
    return "/".join(parts)


class PointerMoved(Exception):
    """S3's pointer is not what a publisher read: another publisher moved it (or removed it) in between."""


def blob_key(prefix: str, sha256: str) -> str:
    """The key of the content-addressed copy of a file under an S3 prefix (`S3_BLOBS`).

    Raises:
        ArtifactError: `sha256` is not 64 hex digits (a name from a manifest: it must not become a path).
    """
    return "/".join(p for p in (prefix.strip("/"), S3_BLOBS, check_digest(sha256)) if p)


def check_digest(sha256: object) -> str:
    """Return `sha256` if it is a hex sha256 (what names a blob), else raise ArtifactError."""
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ArtifactError(f"{sha256!r} is not a sha256")
    return sha256


def read_s3_pointer(client: Any, bucket: str, prefix: str) -> str | None:
    """The version the prefix's pointer names; None when there is no pointer (the prefix is a version itself).

    Raises:
        ArtifactError: the pointer names no possible version.
        botocore's ClientError: S3 answered anything but "not found" (retry later).
    """
    return read_s3_pointer_state(client, bucket, prefix)[0]


def read_s3_pointer_state(client: Any, bucket: str, prefix: str) -> tuple[str | None, str | None]:
    """The version the prefix's pointer names and the pointer's ETag (what `move_s3_pointer` expects to find);
    (None, None) when there is no pointer.

    Raises:
        ArtifactError: the pointer names no possible version.
        botocore's ClientError: S3 answered anything but "not found" (retry later).
    """
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=pointer_key(prefix))
    except ClientError as exc:
        if storage.is_not_found(exc):
            return None, None
        raise
    return check_name(response["Body"].read().decode("utf-8", "replace").strip()), response["ETag"]


def s3_pointer_etag(client: Any, bucket: str, prefix: str) -> str | None:
    """The pointer object's ETag (one HEAD request: what a watcher compares); None when there is no pointer.

    Raises:
        botocore's ClientError: S3 answered anything but "not found".
    """
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=pointer_key(prefix))["ETag"]
    except ClientError as exc:
        if storage.is_not_found(exc):
            return None
        raise


def write_s3_pointer(client: Any, bucket: str, prefix: str, version: str) -> None:
    """Point the prefix's pointer at a version, whatever it named (an admin's rollback; a publisher uses
    `move_s3_pointer`). Write it after the version's files, so that no reader follows it to a half-uploaded version."""
    client.put_object(Bucket=bucket, Key=pointer_key(prefix), Body=check_name(version).encode())


def move_s3_pointer(client: Any, bucket: str, prefix: str, version: str, expected_etag: str | None) -> None:
    """Point the prefix's pointer at a version only if it is still as the publisher read it: its ETag is
    `expected_etag`, or (None) there is still no pointer. One conditional write (If-Match, If-None-Match), so of two
    publishers that read the same pointer, the second fails instead of silently undoing the first.

    Raises:
        PointerMoved: the pointer changed (or appeared, or went) since it was read.
        botocore's ClientError: any other answer of S3.
    """
    from botocore.exceptions import ClientError

    condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
    try:
        client.put_object(Bucket=bucket, Key=pointer_key(prefix), Body=check_name(version).encode(), **condition)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 412: the condition failed; 409: another conditional write to the key won the race; 404: it was removed
        if status in (409, 412) or (expected_etag and storage.is_not_found(exc)):
            raise PointerMoved(f"s3://{bucket}/{pointer_key(prefix)} changed while publishing "
                               f"({exc.response.get('Error', {}).get('Code')})") from None
        raise


def delta_base(folder: Path) -> str | None:
    """The base version a version folder's manifest names when it is a delta; None for a full version or an
    unreadable manifest."""
    try:
        base = (storage.read_json(Path(folder) / MANIFEST).get("delta") or {}).get("base")
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) else None


def prune(folder: Path, keep: int = KEEP_VERSIONS, protect: Iterable[str] = (), order: str = "name") -> list[Path]:
    """Delete the version folders of `folder` but the `keep` newest, those named in `protect` and the base of every
    delta kept; then a kept delta whose base is gone (it cannot be served), unless protected.

    A version folder is a directory with a manifest, not hidden (a staging folder) and not a symlink.

    Args:
        folder: a data dir's `index/`, or an instance's cache of one S3 prefix.
        keep: how many of the newest versions to keep.
        protect: version names never deleted: the one served, those other workers serve.
        order: what "newest" means: `name` in a data dir, where names sort by build time; `fetched` in a cache,
            by when the manifest was written there, which is when this instance fetched the version: a rollback
            fetches a version with an old name, and it is the newest there.

    Returns:
        The folders removed.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    versions = [p for p in Path(folder).iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                and (p / MANIFEST).is_file()]
    if order == "name":
        versions.sort(key=lambda p: p.name, reverse=True)
    else:
        versions.sort(key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)
    protect = set(protect)
    bases = {p.name: delta_base(p) for p in versions}
    kept = {p.name for p in versions[:max(keep, 0)]} | protect
    kept |= {bases[name] for name in kept if bases.get(name)}
    removed = [p for p in versions if p.name not in kept]
    removed += [p for p in versions if p.name in kept and p.name not in protect
                and bases[p.name] and not (Path(folder) / bases[p.name]).is_dir()]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    if removed:
        log.info("removed %d old index version(s) from %s (keeping the %d newest): %s", len(removed), folder, keep,
                 ", ".join(p.name for p in removed))
    return removed
