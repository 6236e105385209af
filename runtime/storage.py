"""Small file helpers shared by the stages and the service: hashing, atomic writes and folder swaps, JSON, and S3
through boto3 (one client per process and thread)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The environment a boto3 client is made from: a client is reused only while these are as they were
S3_CLIENT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE")
_clients = threading.local()
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # <fcntl.h> and <linux/fs.h>: renameat2's "relative to the cwd", "swap both"
NOT_FOUND = ("404", "NoSuchKey", "NotFound")  # what S3 answers for a key that is not there
DENIED = ("AccessDenied", "403", "AllAccessDisabled")  # what it answers to a caller without the permission


class UnsafePathError(ValueError):
    """A name read from outside (a bucket's key, a manifest's path) that would become a path outside its folder."""


def inside(root: Path, rel: str, what: str = "a name") -> Path:
    """Return `root / rel` for a relative name read from a bucket or a manifest, after checking that it stays
    inside `root`: not absolute, no `..`, no empty or NUL-bearing part, and not through a symlink leading out.

    Raises:
        UnsafePathError: the name would leave `root` (`/etc/x`, `../x`, `a/../../x`, ...); it must never be used.
    """
    parts = rel.split("/") if isinstance(rel, str) else None
    if not parts or rel.startswith("/") or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{what} {rel!r} is not a plain relative path; refusing to write or read it")
    root = Path(root)
    target = root.joinpath(*parts)
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafePathError(f"{what} {rel!r} leads outside {root} (through a symlink); refusing it")
    return target


def is_transient(error: BaseException) -> bool:
    """Whether an error met reading S3 or the network may pass by itself, so the read is worth retrying: a
    throttle (503 SlowDown), a 5xx, a dropped or timed-out connection, a denial (a policy being fixed). A "not
    found" is final, and so is anything that is not about S3 or the network (a bug, a verified mismatch).

    The one classification the stages and the service share: only an `ArtifactError` (a hash, a size, a manifest
    that is not one) refuses an index version; what this calls transient is retried with backoff.
    """
    from boto3.exceptions import RetriesExceededError, S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

    if isinstance(error, ClientError):
        return not is_not_found(error)
    return isinstance(error, (BotoCoreError, ConnectionError, TimeoutError, RetriesExceededError,
                              S3TransferFailedError, S3UploadFailedError, TransferRetriesExceeded))


def is_denied(error: BaseException) -> bool:
    """Whether a botocore ClientError says the caller may not do this (its role lacks the permission)."""
    return getattr(error, "response", {}).get("Error", {}).get("Code") in DENIED


def is_not_found(error: BaseException) -> bool:
    """Whether a botocore ClientError says the object is not there (not a denial, a throttle or a server error)."""
    return getattr(error, "response", {}).get("Error", {}).get("Code") in NOT_FOUND


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """Return one sha256 over every file under a folder (relative names and contents), or of a file."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        make_readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_readable(path: Path) -> None:
    """Give a file the permissions a normally created file gets (mkstemp and Annoy's on-disk build use 0600),
    so that a service running as another user can read what the pipeline wrote."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def swap_in(staging: Path, target: Path) -> None:
    """Replace the folder `target` with the complete folder `staging`, so that no reader sees a half-written one and
    a crash at any point leaves a complete `target`.

    On Linux the two folders are exchanged in one step (renameat2's RENAME_EXCHANGE), then the old one, now at
    `staging`'s name, is deleted: the next run's cleaning of staging folders takes it if a crash came first.
    Elsewhere the old folder is renamed aside to `.NAME.old-PID` first; a crash before the new one is renamed in
    leaves no `target`, and `undo_interrupted_swap` (which every writer calls before its next swap) puts the old one
    back.
    """
    staging, target = Path(staging), Path(target)
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def undo_interrupted_swap(target: Path) -> bool:
    """Put back the folder a `swap_in` renamed aside when a crash stopped it before the new one was in place; return
    whether there was one. Call it before deleting a run's leftovers: that folder is the only complete copy."""
    target = Path(target)
    if target.exists():
        return False
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    aside[-1].rename(target)
    log.warning("put back %s from %s: a run was stopped while replacing it", target, aside[-1].name)
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux's renameat2 with RENAME_EXCHANGE); False where this system or
    file system cannot, and nothing happened."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc before 2.28, musl)
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def link_or_copy(src: Path | str, dst: Path | str) -> None:
    """Hard-link a file where the filesystem allows (the same bytes, no second copy on disk), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the filesystem allows (an extractor can be hundreds of MB)."""
    shutil.copytree(src, dst, copy_function=link_or_copy)


def json_bytes(obj: Any) -> bytes:
    """The bytes `write_json` writes: pretty-printed JSON with a trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed, with a trailing newline."""
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def split_s3(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into bucket and key."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def s3_client() -> Any:
    """Return this thread's boto3 S3 client, made once per process and thread (a client holds a connection pool, and
    making one costs milliseconds: once per image in acquire, once per request in a watcher).

    boto3's clients may be shared between threads, but the session that makes them may not, and a client must not
    cross a fork; so each thread of each process makes its own, from a session of its own. A client is made again
    when the environment it was made from changed (`S3_CLIENT_ENV`: AWS_ENDPOINT_URL, boto3's own variable, points it
    at another server).
    """
    key = (os.getpid(), *(os.environ.get(name) for name in S3_CLIENT_ENV))
    cached = getattr(_clients, "s3", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.session.Session().client("s3", endpoint_url=endpoint)
    _clients.s3 = (key, client)
    return client


def s3_exists(uri: str) -> bool:
    """Return whether an S3 object exists."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def mirror_s3(uri: str, cache_dir: Path) -> Path:
    """Mirror every object under an S3 prefix into `cache_dir/<bucket>/<prefix>`: download what is new or changed
    (by ETag, so an object re-uploaded with the same size is fetched again), delete local files whose object is
    gone (a removed product must not stay in the catalog), and keep the rest.

    The ETags of the mirrored files are kept in `cache_dir/.etags/<bucket>/<sha256 of the prefix>.json`, outside
    the mirror, so a source reading the folder never sees them.

    Returns:
        The local folder that mirrors the prefix.

    A key whose name would leave the mirror (`prefix//etc/x`, `prefix/../x`) is skipped with a warning: a shop's
    bucket is input like any other.

    Raises:
        FileNotFoundError: nothing (safe) exists under the prefix.
    """
    bucket, prefix = split_s3(uri.rstrip("/"))
    prefix = prefix + "/" if prefix else ""
    local_root = Path(cache_dir) / bucket / prefix
    etags_file = Path(cache_dir) / ".etags" / bucket / f"{sha256_bytes(prefix.encode())[:32]}.json"
    try:
        known = read_json(etags_file)
    except (OSError, ValueError):
        known = {}
    client = s3_client()
    listed: dict[str, str] = {}
    refused: list[str] = []
    fetched = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):  # a "folder" placeholder
                continue
            try:
                target = inside(local_root, rel, f"S3 key s3://{bucket}/{obj['Key']}: the name")
            except UnsafePathError as error:
                log.warning("skipped: %s (it would be written outside %s)", error, local_root)
                refused.append(obj["Key"])
                continue
            listed[rel] = obj["ETag"]
            if target.is_file() and known.get(rel) == obj["ETag"] and target.stat().st_size == obj["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            fetched += 1
            known[rel] = obj["ETag"]
            if fetched % 1000 == 0:  # a killed mirror of a large prefix keeps what it has fetched
                write_json(etags_file, known)
    if not listed:
        raise FileNotFoundError(f"no objects under {uri}")
    gone = [path for path in local_root.rglob("*") if path.is_file()
            and path.relative_to(local_root).as_posix() not in listed]
    for path in gone:
        path.unlink()
    write_json(etags_file, {rel: known[rel] for rel in listed})
    log.info("mirrored %d objects from %s to %s: %d fetched, %d deleted locally, %d refused (unsafe names)",
             len(listed), uri, local_root, fetched, len(gone), len(refused))
    return local_root
