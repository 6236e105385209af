"""The one protocol of index versions (`runtime.versions`) that the stages, deploy and the service share: names that
may become paths, the local and the S3 pointer, pruning; and the S3 client each thread keeps (`runtime.storage`)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from runtime import storage, versions
from runtime.artifacts import ArtifactError
from service.store import fetch_s3


@pytest.mark.parametrize("name", ["20261121T203222-678843", "v1", "base_2"])
def test_a_version_name_is_one_plain_path_component(name: str) -> None:
    assert versions.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "../../etc", "a/b", "/abs", "a\\b", ".tmp-1", "current",
                                  "CURRENT", "v1\n", None, 3])
def test_anything_else_never_becomes_a_path(name: object) -> None:
    with pytest.raises(ArtifactError, match="is not a version name"):
        versions.check_name(name)


def test_the_s3_pointer_is_written_read_and_watched_the_same_way_everywhere(s3_server: str) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    assert versions.read_s3_pointer(client, "shop", "prod") is None  # no pointer: the prefix is a version itself
    assert versions.s3_pointer_etag(client, "shop", "prod") is None
    versions.write_s3_pointer(client, "shop", "prod/", "v1")
    first = versions.s3_pointer_etag(client, "shop", "/prod")
    assert versions.read_s3_pointer(client, "shop", "prod") == "v1" and first
    versions.write_s3_pointer(client, "shop", "prod", "v2")
    assert versions.read_s3_pointer(client, "shop", "prod") == "v2"
    assert versions.s3_pointer_etag(client, "shop", "prod") != first
    assert versions.pointer_key("") == "CURRENT" and versions.pointer_key("/a/b/") == "a/b/CURRENT"
    assert versions.version_key("", "v1", "manifest.json") == "v1/manifest.json"
    client.put_object(Bucket="shop", Key="prod/CURRENT", Body=b"../../etc")  # what anyone with write access may put
    with pytest.raises(ArtifactError, match="not a version name"):
        versions.read_s3_pointer(client, "shop", "prod")
    with pytest.raises(ArtifactError):
        versions.write_s3_pointer(client, "shop", "prod", "../elsewhere")


def test_a_pointer_naming_a_path_outside_the_cache_is_refused(s3_server: str, tmp_path: Path) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="prod/CURRENT", Body=b"../../../outside")
    client.put_object(Bucket="shop", Key="outside/manifest.json", Body=json.dumps({"files": {}}).encode())
    with pytest.raises(ArtifactError, match="not a version name"):
        fetch_s3("s3://shop/prod", tmp_path / "cache")
    assert not (tmp_path / "outside").exists() and not list((tmp_path / "cache").rglob("manifest.json"))


@pytest.mark.parametrize("rel", ["../../escaped", "/tmp/escaped-abs", "thumbs/../../../escaped", "a//b", "./x", ""])
def test_a_manifest_naming_a_path_outside_its_folder_is_refused(s3_server: str, tmp_path: Path, rel: str) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="prod/CURRENT", Body=b"v1")
    entry = {"sha256": storage.sha256_bytes(b"x"), "bytes": 1}
    manifest = {"format_version": 3, "version": "v1", "files": {rel: entry}}
    client.put_object(Bucket="shop", Key="prod/v1/manifest.json", Body=json.dumps(manifest).encode())
    client.put_object(Bucket="shop", Key=f"prod/v1/{rel}", Body=b"x")
    with pytest.raises(ArtifactError, match="is not a plain relative path; refusing"):
        fetch_s3("s3://shop/prod", tmp_path / "cache")
    assert not any("escaped" in p.name for p in tmp_path.rglob("*")) and not Path("/tmp/escaped-abs").exists()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"files": {"a": "b"}}', b'{"version": "v1"}'])
def test_a_manifest_that_is_not_one_refuses_the_version(s3_server: str, tmp_path: Path, body: bytes) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="prod/CURRENT", Body=b"v1")
    client.put_object(Bucket="shop", Key="prod/v1/manifest.json", Body=body)
    with pytest.raises(ArtifactError, match=r"s3://shop/prod/v1 is not (JSON|an index manifest)"):
        fetch_s3("s3://shop/prod", tmp_path / "cache")


def test_a_missing_manifest_is_an_error_to_retry_not_a_refusal(s3_server: str, tmp_path: Path) -> None:
    """Only what the bytes say refuses a version; S3 not answering (here: no manifest yet) is retried."""
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="prod/CURRENT", Body=b"v1")
    with pytest.raises(ClientError) as raised:
        fetch_s3("s3://shop/prod", tmp_path / "cache")
    assert not isinstance(raised.value, ArtifactError)


def test_mirroring_a_bucket_writes_nothing_outside_its_folder(s3_server: str, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    for key in ("cat/ok/a.jpg", "cat//etc/escaped-root.jpg", "cat/x/../../escaped-up.jpg", "cat/./dot.jpg"):
        client.put_object(Bucket="shop", Key=key, Body=b"jpeg")
    listed = [o["Key"] for o in client.list_objects_v2(Bucket="shop")["Contents"]]
    assert "cat//etc/escaped-root.jpg" in listed  # S3 keeps the names as given: they reach the mirror as they are
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="runtime.storage"):
        local = storage.mirror_s3("s3://shop/cat", cache)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == ["ok/a.jpg"]
    assert not Path("/etc/escaped-root.jpg").exists()
    assert not any("escaped" in p.name for p in tmp_path.rglob("*"))
    assert "is not a plain relative path" in caplog.text and "cat//etc/escaped-root.jpg" in caplog.text


def test_a_symlink_inside_a_folder_cannot_lead_a_name_out(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(storage.UnsafePathError, match="through a symlink"):
        storage.inside(tmp_path / "root", "link/escaped")
    assert storage.inside(tmp_path / "root", "thumbs/ab.jpg") == tmp_path / "root" / "thumbs" / "ab.jpg"


@pytest.mark.parametrize("error, transient", [
    (ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"), True),
    (ClientError({"Error": {"Code": "InternalError"}}, "GetObject"), True),
    (ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject"), True),
    (ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"), False),
    (ClientError({"Error": {"Code": "404"}}, "HeadObject"), False),
    (ConnectionResetError(), True),
    (ArtifactError("a hash differs"), False),
    (RuntimeError("a bug"), False),
])
def test_which_errors_may_pass_by_themselves(error: Exception, transient: bool) -> None:
    assert storage.is_transient(error) is transient


@pytest.mark.parametrize("code, missing", [("NoSuchKey", True), ("404", True), ("SlowDown", False),
                                           ("AccessDenied", False), ("InternalError", False)])
def test_only_not_found_means_no_pointer(code: str, missing: bool) -> None:
    """A throttle, a denial or a server error is an error to retry, never "serve the prefix itself"."""
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=404 if missing else 503)
        stub.add_client_error("head_object", service_error_code=code, http_status_code=404 if missing else 503)
        if missing:
            assert versions.read_s3_pointer(client, "shop", "prod") is None
            assert versions.s3_pointer_etag(client, "shop", "prod") is None
        else:
            with pytest.raises(ClientError):
                versions.read_s3_pointer(client, "shop", "prod")
            with pytest.raises(ClientError):
                versions.s3_pointer_etag(client, "shop", "prod")


def _version(folder: Path, name: str, base: str | None = None, mtime: float | None = None) -> Path:
    (folder / name).mkdir(parents=True)
    manifest = {"version": name, **({"delta": {"base": base}} if base else {})}
    (folder / name / "manifest.json").write_text(json.dumps(manifest))
    if mtime is not None:
        os.utime(folder / name / "manifest.json", (mtime, mtime))
    return folder / name


def test_the_local_pointer_switches_atomically_and_is_found_from_a_data_dir(tmp_path: Path) -> None:
    index = tmp_path / "data" / "index"
    for name in ("v1", "v2"):
        _version(index, name)
    versions.point_local(index, "v1")
    assert versions.local_pointer(tmp_path / "data") == index / "current" == versions.local_pointer(index)
    assert (index / "current").resolve().name == "v1"
    versions.point_local(index, "v2")
    assert (index / "current").resolve().name == "v2" and os.readlink(index / "current") == "v2"
    assert versions.local_pointer(index / "v2") is None  # a version folder: nothing moves it
    assert sorted(p.name for p in index.iterdir()) == ["current", "v1", "v2"]  # no temporary link left
    with pytest.raises(ArtifactError):
        versions.point_local(index, "../v1")


def test_pruning_keeps_the_newest_what_is_protected_and_the_bases_of_kept_deltas(tmp_path: Path) -> None:
    index = tmp_path / "index"
    for name in ("v1", "v2", "v3", "v4"):
        _version(index, name)
    _version(index, "v5", base="v1")  # a delta over the oldest full version
    _version(index, "v6", base="gone")  # a delta whose base was removed by hand: it cannot be served
    (index / "not-a-version").mkdir()  # no manifest: not ours to delete
    (index / ".tmp-v7").mkdir()  # a build in progress
    removed = versions.prune(index, keep=2, protect={"v3"})
    assert sorted(p.name for p in removed) == ["v2", "v4", "v6"]
    assert sorted(p.name for p in index.iterdir()) == [".tmp-v7", "not-a-version", "v1", "v3", "v5"]
    assert versions.prune(index, keep=2, protect={"v3"}) == []


def test_a_cache_prunes_by_when_a_version_was_fetched_not_by_its_name(tmp_path: Path) -> None:
    """A rollback fetches an old name: in an instance's cache it is the newest."""
    cache = tmp_path / "cache"
    for age, name in enumerate(["v4", "v3", "v2", "v1"]):
        _version(cache, name, mtime=1e9 - 60 * age)
    os.utime(cache / "v1" / "manifest.json", (1e9 + 60, 1e9 + 60))  # just fetched again
    assert sorted(p.name for p in versions.prune(cache, keep=2, order="fetched")) == ["v2", "v3"]
    with pytest.raises(ValueError, match="order must be one of"):
        versions.prune(cache, order="age")


def test_one_s3_client_per_thread_made_again_when_its_environment_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    client = storage.s3_client()
    assert storage.s3_client() is client and client.meta.endpoint_url == "http://127.0.0.1:9"
    other: list = []
    thread = threading.Thread(target=lambda: other.append(storage.s3_client()))
    thread.start()
    thread.join(timeout=30)
    assert other and other[0] is not client  # a session is not shared between threads
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:10")
    moved = storage.s3_client()
    assert moved is not client and moved.meta.endpoint_url == "http://127.0.0.1:10"
