"""Several instances on one S3 bucket: a catalog published with --artifacts-only reaches each by itself, under load,
and a tampered version is refused once while the instances keep serving."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from pipeline import index
from runtime import versions
from scripts import deploy
from tests.helpers import Load, free_port, health, multipart, start_gunicorn, stop

BUCKET, PREFIX = "shop-search", "prod"
CHECK_S = 1.0



def loads_refused(base: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    line = [x for x in text.splitlines() if x.startswith('visual_search_index_loads_total{outcome="refused"}')]
    return float(line[0].split()[-1]) if line else 0.0


def tampered_upload(folder: Path, client) -> str:
    """Upload an index version file by file (as deploy did before files were stored by content) with one file
    altered (same size: only its sha256 tells), then point CURRENT at it."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        body = path.read_bytes()
        if path.name == "index.ann":  # this build's own file: an instance holds no copy of it by content yet
            body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{folder.name}/{path.relative_to(folder).as_posix()}",
                          Body=body)
    versions.write_s3_pointer(client, BUCKET, PREFIX, folder.name)
    return folder.name


@pytest.fixture()
def two_instances(s3_server: str, own_index: Path, tmp_path: Path):
    """Two gunicorn services (one worker each, separate caches, like two Beanstalk instances) on one moto bucket."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    first = deploy.deploy(own_index / "index" / "current", BUCKET, "app", "env", PREFIX, artifacts_only=True)
    processes, bases = [], []
    try:
        for name in ("a", "b"):
            port, log = free_port(), tmp_path / f"{name}.log"
            try:
                process, _ = start_gunicorn(f"s3://{BUCKET}/{PREFIX}", port, 1, tmp_path / f"cache-{name}",
                                            deadline_s=120, env={"RELOAD_CHECK_S": str(CHECK_S)}, log=log)
            except RuntimeError as exc:
                pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
            processes.append(process)
            bases.append(f"http://127.0.0.1:{port}")
        yield bases, first["artifacts"]["version"]
    finally:
        for process in processes:
            stop(process)


def test_a_published_catalog_reaches_every_instance_under_load(two_instances, own_index: Path) -> None:
    bases, first = two_instances
    assert [health(b)["version"] for b in bases] == [first, first]
    image = next((own_index / "catalog" / "images").rglob("*.jpg"))
    body, content_type = multipart("image", image.name, image.read_bytes())
    requests = [(f"{base}/api/search?k=3", body, content_type) for base in bases]
    second = index.run(own_index, trees=4)["version"]
    with Load(requests, clients=4) as load:
        time.sleep(1)
        deploy.deploy(own_index / "index" / "current", BUCKET, "app", "env", PREFIX, artifacts_only=True)
        published = time.monotonic()  # CURRENT is written last, once every file is uploaded
        reached: dict[str, float] = {}
        while len(reached) < 2 and time.monotonic() - published < 120:
            for base in bases:
                if base not in reached and health(base)["version"] == second:
                    reached[base] = time.monotonic() - published
            time.sleep(0.05)
        time.sleep(1)
    states = [health(b) for b in bases]
    load_s = max(s["load_seconds"] for s in states)
    print(f"\nnew version reached the instances in {sorted(round(v, 2) for v in reached.values())} s "
          f"(check every {CHECK_S} s, load {load_s:.2f} s); requests {load.counts()}")
    assert len(reached) == 2, reached
    assert max(reached.values()) <= 2 * CHECK_S + load_s + 1.0  # + 1 s for this test's own polling
    assert load.counts() == {200: len(load.statuses)} and len(load.statuses) > 20, load.counts()

    # A tampered version: every instance refuses it once, says so, and keeps serving the last good one.
    refused_before = [loads_refused(b) for b in bases]
    bad = tampered_upload(own_index / "index" / index.run(own_index, trees=5)["version"], boto3.client("s3"))
    with Load(requests, clients=4) as load:
        time.sleep(6 * CHECK_S)
    states = [health(b) for b in bases]
    print(f"tampered version {bad}: requests {load.counts()}, refused: {[s['refused']['error'][:80] for s in states]}")
    for state in states:
        assert state["version"] == second
        assert state["refused"]["artifacts"] == f"s3://{BUCKET}/{PREFIX}"
        assert f"{bad}/index.ann does not match its sha256" in state["refused"]["error"]
    # refused once per instance in 6 checks: not tried again until CURRENT changes
    assert [loads_refused(b) - r for b, r in zip(bases, refused_before, strict=True)] == [1.0, 1.0]
    assert load.counts() == {200: len(load.statuses)}, load.counts()


def search_ids(base: str, body: bytes, content_type: str) -> list[str]:
    request = urllib.request.Request(f"{base}/api/search?k=10", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [r["product_id"] for r in json.loads(response.read())["results"]]


def test_a_published_delta_reaches_every_instance_under_load(two_instances, own_index: Path) -> None:
    from pipeline import remove
    from runtime.items import read_items
    from runtime.layout import ITEMS_FILE

    bases, _first = two_instances
    items = read_items(own_index / "index" / "current" / ITEMS_FILE)
    gone = items[12]
    image = own_index / "catalog" / gone["image"]
    body, content_type = multipart("image", image.name, image.read_bytes())
    assert all(gone["product_id"] in search_ids(b, body, content_type) for b in bases)
    requests = [(f"{base}/api/search?k=3", body, content_type) for base in bases]
    version = remove.run(own_index, [gone["product_id"]])["version"]
    with Load(requests, clients=3) as load:
        time.sleep(1)
        published = deploy.deploy(own_index / "index" / "current", BUCKET, "app", "env", PREFIX,
                                  artifacts_only=True)["artifacts"]
        at = time.monotonic()
        reached: dict[str, float] = {}
        while len(reached) < 2 and time.monotonic() - at < 60:
            for base in bases:
                if base not in reached and health(base)["version"] == version:
                    reached[base] = time.monotonic() - at
            time.sleep(0.05)
        time.sleep(1)
    states = [health(b) for b in bases]
    print(f"\ndelta {version} ({published['uploaded']} files, {published['bytes']} bytes uploaded) reached the "
          f"instances in {sorted(round(v, 2) for v in reached.values())} s, loaded in "
          f"{[round(s['load_seconds'], 3) for s in states]} s; requests {load.counts()}")
    assert published["uploaded"] == 2 and published["base"]["uploaded"] == 0  # removed.json and the manifest
    assert len(reached) == 2 and max(reached.values()) <= 2 * CHECK_S + 1.0, reached
    assert load.counts() == {200: len(load.statuses)} and len(load.statuses) > 10, load.counts()
    for base, state in zip(bases, states, strict=True):
        assert state["items"] == len(items) - 1
        assert gone["product_id"] not in search_ids(base, body, content_type)
