"""Small file helpers shared by the stages and the service: hashing, atomic writes, JSON, and S3 through boto3."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the filesystem allows (an extractor can be hundreds of MB)."""
    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
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


def s3_client():
    """Return a boto3 S3 client; AWS_ENDPOINT_URL (boto3's own variable) points it at another server."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def s3_exists(uri: str) -> bool:
    """Return whether an S3 object exists."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def s3_read(uri: str, max_bytes: int) -> bytes:
    """Read one S3 object, refusing one larger than `max_bytes`."""
    bucket, key = split_s3(uri)
    response = s3_client().get_object(Bucket=bucket, Key=key)
    if response["ContentLength"] > max_bytes:
        raise ValueError(f"{uri} is larger than {max_bytes // 2**20} MiB")
    return response["Body"].read()


def mirror_s3(uri: str, cache_dir: Path) -> Path:
    """Mirror every object under an S3 prefix into `cache_dir/<bucket>/<prefix>`: download what is new or changed
    (by ETag, so an object re-uploaded with the same size is fetched again), delete local files whose object is
    gone (a removed product must not stay in the catalog), and keep the rest.

    The ETags of the mirrored files are kept in `cache_dir/.etags/<bucket>/<sha256 of the prefix>.json`, outside
    the mirror, so a source reading the folder never sees them.

    Returns:
        The local folder that mirrors the prefix.

    Raises:
        FileNotFoundError: nothing exists under the prefix.
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
    fetched = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                continue
            listed[rel] = obj["ETag"]
            target = local_root / rel
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
    log.info("mirrored %d objects from %s to %s: %d fetched, %d deleted locally", len(listed), uri, local_root,
             fetched, len(gone))
    return local_root
