"""Publishing index versions to S3: files stored once by content, the pointer moved by compare-and-swap, and old
versions pruned. What `scripts/deploy.py` does before (or instead of, with --artifacts-only) touching Beanstalk.

    s3://BUCKET/PREFIX/blobs/<sha256>        every version's files, each content stored once
    s3://BUCKET/PREFIX/<version>/manifest.json   a version (S3 metadata layout=blobs: its files are in blobs/)
    s3://BUCKET/PREFIX/CURRENT                the version served
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime import artifacts, storage, versions
from runtime.layout import BLOB_LAYOUT, MANIFEST
from scripts.beanstalk import DeployError

# a stored file no kept version lists is pruned only this long after its upload: another publisher may be uploading
# the version that lists it, whose manifest comes last
BLOB_GRACE_S = 24 * 3600.0
UPLOAD_THREADS = 8  # files uploaded at once


def upload_artifacts(folder: Path, bucket: str, prefix: str, client=None, replace_current: bool = False) -> dict:
    """Upload a verified index folder to s3://bucket/prefix/<version>/, skipping files already there, then point
    s3://bucket/prefix/CURRENT at it (last, so no instance sees a half-uploaded version).

    The pointer moves only from a version this one was built on (`lineage` in its manifest: the versions its data
    dir served before it), and only if nobody moved it during the upload (a conditional write); else nothing is
    pointed at and DeployError says what moved and how to rebase. `replace_current` publishes over whatever it names.

    A delta version (`pipeline remove`) needs its base beside it: the base is uploaded first unless its manifest
    is already there (the same sha256), so publishing a delta over a published base uploads the delta's files only.

    Returns:
        Counts of uploaded and skipped files and the bytes uploaded, the version, the version CURRENT named before
        (`replaced`), and the S3 URI the service's ARTIFACTS should name; for a delta, `base` with the same counts
        for its base.

    Raises:
        DeployError: CURRENT names a version this one was not built on, or moved while uploading.
    """
    folder = artifacts.resolve_index(folder)
    manifest = artifacts.verify(folder)
    client = client or storage.s3_client()
    current, etag = versions.read_s3_pointer_state(client, bucket, prefix)
    if not replace_current:
        _check_built_on(client, bucket, prefix, current, manifest)
    stored = _stored_blobs(client, bucket, prefix)
    base_result = None
    if manifest.get("delta"):
        base_folder, _ = artifacts.base_of(folder, manifest)
        base_result = _upload_version(base_folder, bucket, prefix, client, stored, skip_if_published=True)
    result = _upload_version(folder, bucket, prefix, client, stored)
    try:
        versions.move_s3_pointer(client, bucket, prefix, manifest["version"], etag)
    except versions.PointerMoved as exc:
        now = versions.read_s3_pointer(client, bucket, prefix)
        raise DeployError(f"{exc}: it named {current} when this deploy began and names {now} now (another "
                          f"publisher). {manifest['version']} is uploaded but not served; {_REBASE}") from None
    return {**result, **({"base": base_result} if base_result else {}), "replaced": current,
            "artifacts": f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")}


_REBASE = ("to rebase, bring this data dir up to date with what is served (the products a `pipeline remove` took "
           "out are in that version's removed.json: remove them here too, or rebuild from the catalog that has them "
           "gone), then deploy again; or pass --replace-current to publish over it anyway")


def _check_built_on(client, bucket: str, prefix: str, current: str | None, manifest: dict) -> None:
    """Raise DeployError unless CURRENT is absent, names this version, or names one it was built on."""
    built_on = manifest.get("lineage") or []
    if current is None or current == manifest["version"] or current in built_on:
        return
    try:
        served = json.loads(client.get_object(Bucket=bucket, Key=versions.version_key(prefix, current, MANIFEST))[
            "Body"].read())
        delta = served.get("delta") or {}
        what = f"{current} (built {served.get('created_at', '?')}" + (
            f", a delta over {delta.get('base')} that removes {delta.get('removed', 0)} and adds "
            f"{delta.get('added', 0)} products)" if delta else ")")
    except Exception:  # noqa: BLE001 - only a description: the refusal stands without it
        what = current
    raise DeployError(f"s3://{bucket}/{versions.pointer_key(prefix)} names {what}, which {manifest['version']} was "
                      f"not built on (its data dir served {', '.join(built_on[:3]) or 'nothing'} before it): "
                      f"publishing would undo that version's changes. Nothing was uploaded; {_REBASE}")


def _upload_version(folder: Path, bucket: str, prefix: str, client, stored: set[str],
                    skip_if_published: bool = False) -> dict:
    """Upload one version: each file whose content is not yet stored (`stored`, updated) to
    s3://bucket/prefix/blobs/<sha256>, then its manifest to s3://bucket/prefix/<version>/, last."""
    manifest = artifacts.verify(folder, check_hashes=False)
    key = versions.version_key(prefix, manifest["version"], MANIFEST)
    manifest_sha = artifacts.manifest_sha256(folder)
    if skip_if_published and _published_sha(client, bucket, key) == manifest_sha:
        return {"uploaded": 0, "skipped": len(manifest["files"]) + 1, "bytes": 0, "version": manifest["version"]}
    todo = {entry["sha256"]: rel for rel, entry in sorted(manifest["files"].items()) if entry["sha256"] not in stored}
    skipped = len(manifest["files"]) - len(todo)
    # thousands of small files: many uploads in flight at once (boto3's clients are thread-safe)
    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="publish") as pool:
        list(pool.map(lambda sha: client.upload_file(str(folder / todo[sha]), bucket, versions.blob_key(prefix, sha)),
                      todo))
    stored |= set(todo)
    uploaded, sent = len(todo), sum(manifest["files"][rel]["bytes"] for rel in todo.values())
    if _published_sha(client, bucket, key) == manifest_sha:
        skipped += 1
    else:
        layout_key, layout = BLOB_LAYOUT
        client.upload_file(str(folder / MANIFEST), bucket, key,
                           ExtraArgs={"Metadata": {"sha256": manifest_sha, layout_key: layout}})
        uploaded += 1
        sent += (folder / MANIFEST).stat().st_size
    return {"uploaded": uploaded, "skipped": skipped, "bytes": sent, "version": manifest["version"]}


def _stored_blobs(client, bucket: str, prefix: str) -> set[str]:
    """The sha256 of every file already stored under s3://bucket/prefix/blobs/ (one listing: a thousand a request)."""
    folder = versions.blob_key(prefix, "0" * 64).rpartition("/")[0] + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
    return {obj["Key"][len(folder):] for page in pages for obj in page.get("Contents", [])}


def _published_sha(client, bucket: str, key: str) -> str | None:
    """The sha256 an earlier upload recorded on an object, or None when it is not there."""
    try:
        return client.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
    except client.exceptions.ClientError:
        return None


def prune_s3(bucket: str, prefix: str, keep: int, client=None, grace_s: float = BLOB_GRACE_S) -> dict:
    """Delete the versions under s3://bucket/prefix beyond the `keep` newest, except the one CURRENT names and the
    base of every delta kept; then the stored files (`blobs/`) no kept version lists, unless written in the last
    `grace_s` seconds (another publisher may be uploading the version that lists them).

    Returns:
        The versions removed and kept, and the blobs removed with their bytes.
    """
    if keep < 1:
        raise ValueError(f"--prune keeps at least 1 version, got {keep}")
    client = client or storage.s3_client()
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root, Delimiter="/")
    names = sorted((p["Prefix"][len(root):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])),
                   reverse=True)
    found = {}
    for name in names:
        try:
            versions.check_name(name)
            found[name] = json.loads(client.get_object(Bucket=bucket, Key=versions.version_key(prefix, name, MANIFEST))
                                     ["Body"].read())
        except (artifacts.ArtifactError, client.exceptions.NoSuchKey, ValueError):
            continue  # not a version folder (blobs/, a half-uploaded one)
    kept = set(list(found)[:keep]) | ({versions.read_s3_pointer(client, bucket, prefix)} & set(found))
    kept |= {(found[name].get("delta") or {}).get("base") for name in kept} & set(found)
    removed = [name for name in found if name not in kept]
    for name in removed:
        _delete_keys(client, bucket, [versions.version_key(prefix, name, MANIFEST)])  # not a version from here on
        folder = versions.version_key(prefix, name) + "/"
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
        _delete_keys(client, bucket, [o["Key"] for page in pages for o in page.get("Contents", [])])
    listed = {entry["sha256"] for name in kept for entry in found[name].get("files", {}).values()}
    folder = versions.blob_key(prefix, "0" * 64).rpartition("/")[0] + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
    cutoff = time.time() - grace_s
    orphans = [o for page in pages for o in page.get("Contents", [])
               if o["Key"][len(folder):] not in listed and o["LastModified"].timestamp() < cutoff]
    _delete_keys(client, bucket, [o["Key"] for o in orphans])
    return {"removed": removed, "kept": sorted(kept, reverse=True), "blobs_removed": len(orphans),
            "bytes_removed": sum(o["Size"] for o in orphans)}


def _delete_keys(client, bucket: str, keys: list[str]) -> None:
    """Delete objects, a thousand per request (S3's limit)."""
    for start in range(0, len(keys), 1000):
        batch = keys[start:start + 1000]
        answer = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if answer.get("Errors"):
            raise DeployError(f"S3 refused to delete {len(answer['Errors'])} object(s), e.g. {answer['Errors'][0]}")
