"""S3 failing while a version is published: 503 SlowDown, 500, dropped connections, only GETs or only HEADs failing,
for tens of seconds, between gunicorn (two workers, under load) and S3. No search fails, the old version keeps
serving, and the new one is served soon after S3 answers again: never refused for S3's fault."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from pipeline import index
from scripts import deploy
from service.state import TRANSIENT_BACKOFF_MAX_S
from tests.fault_proxy import FAULTS, FaultProxy
from tests.helpers import Load, free_port, health, moto_s3, multipart, start_gunicorn, stop

BUCKET, PREFIX = "shop-search", "prod"
CHECK_S = 1.0  # RELOAD_CHECK_S of the service under test
FAULT_S = 20.0  # how long S3 fails each time
# botocore's own retries inside one call (standard mode: 3 attempts, up to a few seconds of backoff) and this
# test's polling, on top of RELOAD_CHECK_S, the service's backoff and one load
SLACK_S = 6.0


@dataclass
class Served:
    data: Path
    base: str
    pids: set[int]
    proxy: FaultProxy
    requests: list[tuple[str, bytes, str]]



def each_worker(base: str, pids: set[int], tries: int = 200) -> dict[int, dict]:
    """/health as each worker answers it (asked until every pid has answered)."""
    states: dict[int, dict] = {}
    for _ in range(tries):
        state = health(base)
        states[state["worker"]] = state
        if set(states) >= pids:
            break
    return states


@pytest.fixture(scope="module")
def served(demo_index: Path, tmp_path_factory: pytest.TempPathFactory):
    """A version published to moto's S3, and gunicorn (2 workers) reading that bucket through a FaultProxy."""
    tmp = tmp_path_factory.mktemp("faults")
    data = tmp / "data"
    for folder in ("catalog", "model", "embeddings", "index"):
        shutil.copytree(demo_index / folder, data / folder, symlinks=True)
    image = next((data / "catalog" / "images").rglob("*.jpg"))
    body, content_type = multipart("image", image.name, image.read_bytes())
    with pytest.MonkeyPatch.context() as monkeypatch, moto_s3(monkeypatch) as endpoint, FaultProxy(endpoint) as proxy:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        deploy.upload_artifacts(data / "index" / "current", BUCKET, PREFIX)
        port, log = free_port(), tmp / "gunicorn.log"
        try:
            process, pids = start_gunicorn(f"s3://{BUCKET}/{PREFIX}", port, 2, tmp / "cache", deadline_s=120,
                                           env={"RELOAD_CHECK_S": str(CHECK_S), "AWS_ENDPOINT_URL": proxy.url},
                                           log=log)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
        base = f"http://127.0.0.1:{port}"
        try:
            yield Served(data, base, pids, proxy, [(f"{base}/api/search?k=3", body, content_type)])
        finally:
            stop(process)
            print(f"\ngunicorn's log ends:\n{log.read_text()[-1500:]}")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_version_published_while_s3_fails_is_served_once_it_answers(served: Served, fault: str) -> None:
    old = {s["version"] for s in each_worker(served.base, served.pids).values()}
    assert len(old) == 1
    new = index.run(served.data, trees=4 + list(FAULTS).index(fault))["version"]
    served.proxy.reset()
    with Load(served.requests, clients=2) as load:
        served.proxy.fault(fault)
        started = time.monotonic()
        # the publisher's own S3 works (its client goes to moto directly): the instances' reads fail
        deploy.upload_artifacts(served.data / "index" / "current", BUCKET, PREFIX)
        time.sleep(max(0.0, FAULT_S - (time.monotonic() - started)))
        during = each_worker(served.base, served.pids)
        served.proxy.fault(None)
        recovered = time.monotonic()
        reached: dict[int, float] = {}
        while set(reached) < served.pids and time.monotonic() - recovered < 60:
            state = health(served.base)
            if state["version"] == new:
                reached.setdefault(state["worker"], time.monotonic() - recovered)
            time.sleep(0.05)
    sent, failed = served.proxy.counts()
    states = each_worker(served.base, served.pids)
    load_s = max(s["load_seconds"] for s in states.values())
    print(f"\n{fault}: {FAULT_S:.0f} s of faults; S3 requests sent {sent}, failed {failed}; searches {load.counts()}; "
          f"new version served {sorted(round(v, 2) for v in reached.values())} s after S3 recovered "
          f"(load {load_s:.2f} s); retrying during the fault: {[str(s['retrying'])[:70] for s in during.values()]}")
    assert sum(failed.values()) > 0, "the fault never met a request"
    assert {s["version"] for s in during.values()} == old  # the old version served throughout
    assert set(reached) == served.pids, f"not every worker serves {new} 60 s after S3 recovered: {states}"
    assert max(reached.values()) <= CHECK_S + TRANSIENT_BACKOFF_MAX_S + load_s + SLACK_S, reached
    assert all(s["refused"] is None and s["retrying"] is None for s in states.values()), states
    assert load.counts() == {200: len(load.statuses)} and len(load.statuses) > 20, load.counts()
