"""An image's bytes from where a source points (a file, an http(s) URL, an s3:// object), or word that they are the
ones the last acquire run normalised: the sha256 of a file's bytes, the ETag of an S3 object or an HTTP answer.

What lets a rerun of acquire decode only new and changed images: a row whose bytes are unchanged keeps its
normalised JPEG and its catalog record (`pipeline.catalog.ingest`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime import storage
from runtime.fetch import fetch_url

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 20.0  # one socket operation (connecting, one read)
DOWNLOAD_DEADLINE_S = 120.0  # the whole download: 50 MiB at about 0.5 MB/s; a server dribbling bytes stops here
USER_AGENT = "visual-search-acquire/1"


@dataclass(frozen=True)
class Known:
    """What the last run read at a locator: its bytes' sha256 and the ETag its server gave (empty for a file)."""

    sha256: str
    etag: str = ""


@dataclass(frozen=True)
class Fetched:
    """The bytes read (None when the server or the hash says they are those already known), their sha256 and
    the ETag the server gave."""

    data: bytes | None
    sha256: str
    etag: str = ""


def fetch(locator: str, known: Known | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Fetched:
    """Read an image's bytes unless they are the ones `known` describes.

    A local file is read and hashed (reading is far cheaper than decoding). An S3 object is asked for its ETag
    first and fetched only when it changed; an http(s) URL is fetched with `If-None-Match`, and a 304 means
    unchanged. Either way, bytes whose sha256 equals the known one count as unchanged.

    Raises:
        OSError, ValueError, `runtime.fetch.FetchError`, botocore errors: the image cannot be read (the caller
            rejects that row).
    """
    if locator.startswith(("http://", "https://")):
        return _http(locator, known, max_bytes)
    if locator.startswith("s3://"):
        return _s3(locator, known, max_bytes)
    data = Path(locator).read_bytes()
    return _unless_known(data, known, "")


def _unless_known(data: bytes, known: Known | None, etag: str) -> Fetched:
    sha = storage.sha256_bytes(data)
    return Fetched(None if known is not None and known.sha256 == sha else data, sha, etag)


def _http(url: str, known: Known | None, max_bytes: int) -> Fetched:
    # A catalog's URLs may name the shop's own network (private addresses allowed, unlike a shopper's image_url).
    headers = {"If-None-Match": known.etag} if known is not None and known.etag else None
    response = fetch_url(url, max_bytes, DOWNLOAD_TIMEOUT_S, allow_private=True, headers=headers,
                         deadline=DOWNLOAD_DEADLINE_S, user_agent=USER_AGENT)
    if response.status == 304 and known is not None:
        return Fetched(None, known.sha256, known.etag)
    return _unless_known(response.data, known, response.etag)


def _s3(uri: str, known: Known | None, max_bytes: int) -> Fetched:
    bucket, key = storage.split_s3(uri)
    client = storage.s3_client()
    if known is not None and known.etag:
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ETag"] == known.etag:
            return Fetched(None, known.sha256, known.etag)
    response = client.get_object(Bucket=bucket, Key=key)
    if response["ContentLength"] > max_bytes:
        raise ValueError(f"{uri} is larger than {max_bytes // 2**20} MiB")
    return _unless_known(response["Body"].read(), known, response.get("ETag", ""))
