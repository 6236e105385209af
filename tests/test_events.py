"""Analytics events: UBI query and click records, the writer's queue, rotation, shipping and crash recovery, the
A/B assignment, and the report over days of events."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.analytics_cost import write_day
from pipeline import analytics
from runtime import events
from service import create_app, metrics
from service.events import EXTENSION, EventLog
from service.experiment import CONTROL, TREATMENT, arm_of


def _photo(demo_index: Path) -> bytes:
    return next((demo_index / "catalog" / "images").rglob("*.jpg")).read_bytes()


def _app(index: Path, tmp_path: Path, **config):
    return create_app({"ARTIFACTS": str(index), "ARTIFACTS_CACHE": str(tmp_path / "cache"), "RELOAD_CHECK_S": 0,
                       "EVENTS_DIR": str(tmp_path / "events"), **config})


def _records(root: Path, stream: str) -> list[dict]:
    return list(events.read_records(str(root), stream))


def test_searches_and_clicks_are_recorded_as_ubi_records(demo_index: Path, tmp_path: Path) -> None:
    app = _app(demo_index / "index" / "current", tmp_path, EVENTS_KEEP_VECTORS=True)
    client = app.test_client()
    me = {"X-Client-Id": "3f1c-shopper"}
    photo = _photo(demo_index)
    upload = client.post("/api/search?k=4", data={"image": (io.BytesIO(photo), "q.jpg")}, headers=me).get_json()
    crop = client.post("/api/search?k=3&bbox=0.1,0.1,0.9,0.9", data={"image": (io.BytesIO(photo), "q.jpg")},
                       headers=me).get_json()
    product = upload["results"][0]["product_id"]
    column, values = next(iter(client.get("/api/filters").get_json()["facets"].items()))
    similar = client.get(f"/api/products/{product}/similar?k=2&{column}={values[0]['value']}").get_json()
    anonymous = client.post("/api/search", json={"image_base64": base64.b64encode(photo).decode()}).get_json()
    click = {"action_name": "more_like_this", "query_id": upload["query_id"],
             "event_attributes": {"object": {"object_id": str(upload["results"][1]["product_id"])},
                                  "position": {"ordinal": 2}}}
    accepted = client.post("/api/events", json=click, headers=me)
    assert accepted.status_code == 202 and accepted.get_json() == {"accepted": 1, "recorded": True}
    beacon = dict(click, action_name="click", client_id="3f1c-shopper")  # sendBeacon's text/plain body
    assert client.post("/api/events", data=json.dumps([beacon]), content_type="text/plain").status_code == 202
    app.extensions[EXTENSION].flush()

    queries = {r["query_id"]: r for r in _records(tmp_path / "events", events.QUERIES)}
    assert set(queries) == {upload["query_id"], crop["query_id"], similar["query_id"], anonymous["query_id"]}
    first = queries[upload["query_id"]]
    assert first["application"] == events.APPLICATION and first["client_id"] == "3f1c-shopper"
    assert first["object_id_field"] == "product_id" and first["timestamp"].endswith("Z")
    assert first["query_response_hit_ids"] == [r["product_id"] for r in upload["results"]]
    attributes = first["query_attributes"]
    assert attributes["kind"] == "upload" and attributes["k"] == 4 and attributes["arm"] == CONTROL
    assert attributes["scores"] == [r["score"] for r in upload["results"]]
    assert attributes["index_version"] == upload["version"] and set(attributes["timings_ms"]) >= {"embed", "search"}
    assert len(np.frombuffer(base64.b64decode(attributes["vector_f16"]), np.float16)) == 32  # the test encoder's
    assert queries[crop["query_id"]]["query_attributes"]["kind"] == "crop"
    assert queries[crop["query_id"]]["query_attributes"]["bbox"] == [0.1, 0.1, 0.9, 0.9]
    like = queries[similar["query_id"]]
    assert like["query_attributes"]["kind"] == "similar" and like["user_query"] == str(product)
    assert like["query_attributes"]["filters"] == {column: [values[0]["value"]]}
    assert queries[anonymous["query_id"]]["client_id"] is None
    text = b"".join(p.read_bytes() for p in (tmp_path / "events").rglob("*.jsonl"))
    assert photo[:64] not in text and base64.b64encode(photo)[:64] not in text  # no photo is kept
    clicks = _records(tmp_path / "events", events.EVENTS)
    assert [c["action_name"] for c in clicks] == ["more_like_this", "click"]
    assert all(c["query_id"] == upload["query_id"] and c["client_id"] == "3f1c-shopper" for c in clicks)
    assert clicks[0]["event_attributes"]["position"] == {"ordinal": 2}


@pytest.mark.parametrize("body, message", [
    ({"action_name": "buy"}, "action_name must be one of"),
    ({"action_name": "click"}, "query_id"),
    ({"action_name": "click", "query_id": "q"}, "object_id"),
    ({"action_name": "click", "query_id": "q", "event_attributes": {"object": {"object_id": "1"}}}, "ordinal"),
    ({"action_name": "click", "query_id": "q", "event_attributes": {"object": {"object_id": "1"},
                                                                     "position": {"ordinal": 0}}}, "ordinal"),
    ({"action_name": "click", "query_id": "q", "client_id": "no spaces",
      "event_attributes": {"object": {"object_id": "1"}, "position": {"ordinal": 1}}}, "client_id"),
    ([], "1 to 50"),
    ("text", "JSON object"),
], ids=["action", "no-query", "no-object", "no-rank", "rank-0", "client-id", "empty-list", "not-object"])
def test_bad_events_are_a_400_that_names_the_field(demo_index: Path, tmp_path: Path, body, message: str) -> None:
    client = _app(demo_index / "index" / "current", tmp_path).test_client()
    answer = client.post("/api/events", json=body)
    assert answer.status_code == 400 and message in answer.get_json()["error"]["message"], answer.get_json()
    assert client.post("/api/events", data="{not json").status_code == 400
    bad_client = client.get("/api/filters", headers={"X-Client-Id": "x" * 65})
    assert bad_client.status_code == 400 and bad_client.get_json()["error"]["code"] == "bad_client_id"


def _dropped(stream: str) -> float:
    return metrics.REGISTRY.get_sample_value("visual_search_events_dropped_total",
                                             {"stream": stream, "reason": "queue_full"}) or 0.0


def test_a_full_queue_drops_counts_and_never_waits(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events", queue_size=5)  # its writer is not started: nothing leaves the queue
    before = _dropped(events.QUERIES)
    took = []
    for n in range(50):
        started = time.perf_counter()
        log.emit(events.QUERIES, {"timestamp": time.time(), "n": n})
        took.append(time.perf_counter() - started)
    assert _dropped(events.QUERIES) - before == 45
    assert max(took) < 0.05  # a put that waited would take the writer's whole wake-up (1 s) or forever
    log.start()
    log.flush()
    kept = [r["n"] for r in _records(tmp_path / "events", events.QUERIES)]
    assert kept == [0, 1, 2, 3, 4]


def test_files_rotate_ship_and_a_dead_workers_files_are_recovered(tmp_path: Path) -> None:
    folder, target = tmp_path / "events", tmp_path / "shipped"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = folder / events.OPEN_DIR / f"ubi_queries.2026-12-01.host.{dead.pid}.1.1.jsonl"
    orphan.parent.mkdir(parents=True)
    orphan.write_text('{"query_id": "left-by-a-killed-worker"}\n{"query_id": "cut sho')  # flushed, then killed
    log = EventLog(folder, target=str(target), rotate_s=0.0, ship_s=3600)
    log.start()
    assert not orphan.exists()
    for n in range(3):
        log.emit(events.QUERIES, {"query_id": f"q{n}", "timestamp": time.time()})
        time.sleep(0.05)
        log.flush()
    assert log.ship() >= 2
    shipped = sorted(target.rglob("*.jsonl"))
    assert all(p.relative_to(target).parts[0] == events.QUERIES for p in shipped)
    assert not list(folder.glob("*/dt=*/*.jsonl"))  # nothing left here once stored there
    ids = {r["query_id"] for r in _records(target, events.QUERIES)}
    assert ids == {"left-by-a-killed-worker", "q0", "q1", "q2"}  # the cut line is skipped, not fatal


def test_ab_assignment_is_stable_and_splits_by_the_share() -> None:
    ids = [f"client-{n}" for n in range(20_000)]
    arms = [arm_of(i, "encoder-test", 0.3) for i in ids]
    assert abs(arms.count(TREATMENT) / len(ids) - 0.3) < 0.015
    assert arms == [arm_of(i, "encoder-test", 0.3) for i in ids]  # the same id, the same arm, every time
    other = [arm_of(i, "another-test", 0.3) for i in ids]
    both = sum(a == b == TREATMENT for a, b in zip(arms, other, strict=True)) / len(ids)
    assert abs(both - 0.09) < 0.01  # two experiments split independently
    grown = [arm_of(i, "encoder-test", 0.5) for i in ids]
    assert all(g == TREATMENT for a, g in zip(arms, grown, strict=True) if a == TREATMENT)  # growing keeps B in B
    assert {arm_of(i, "t", 0.0) for i in ids[:100]} == {CONTROL} and {arm_of(i, "t", 1.0) for i in ids[:100]} == \
        {TREATMENT}
    assert arm_of(None, "t", 1.0) == CONTROL  # an anonymous request gets the control


def test_two_versions_are_served_side_by_side_and_a_delta_shares_the_base(own_index: Path, tmp_path: Path) -> None:
    from pipeline import remove

    base = (own_index / "index" / "current").resolve()
    gone = next(json.loads(line) for line in (base / "items.jsonl").open())["product_id"]
    delta = own_index / "index" / remove.run(own_index, [str(gone)])["version"]
    app = _app(base, tmp_path, AB_ARTIFACTS=str(delta), AB_SHARE=0.5, AB_NAME="delta-test")
    control = app.extensions["visual_search"].searcher
    treatment = app.extensions["visual_search_treatment"].searcher
    assert treatment.base is control.base  # the delta loaded only its removals
    client = app.test_client()
    photo = _photo(own_index)
    seen = {}
    for n in range(40):
        me = f"shopper-{n}"
        answer = client.post("/api/search", data={"image": (io.BytesIO(photo), "q.jpg")},
                             headers={"X-Client-Id": me}).get_json()
        seen[me] = answer["version"]
        assert answer["version"] == (delta.name if arm_of(me, "delta-test", 0.5) == TREATMENT else base.name)
    assert set(seen.values()) == {base.name, delta.name}
    app.config["ADMIN_TOKEN"] = "t"
    health = client.get("/health", headers={"Authorization": "Bearer t"}).get_json()
    assert health["version"] == base.name and health["ab"]["version"] == delta.name
    assert health["ab"]["share"] == 0.5 and health["ab"]["error"] is None
    app.extensions[EXTENSION].flush()
    for record in _records(tmp_path / "events", events.QUERIES):
        arm = record["query_attributes"]["arm"]
        assert record["query_attributes"]["index_version"] == (delta.name if arm == TREATMENT else base.name)
        assert record["query_attributes"]["experiment"] == "delta-test"


def test_the_report_over_days_counts_what_was_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    root = tmp_path / "events"
    days = [(dt.date(2026, 3, 1) + dt.timedelta(days=n)).isoformat() for n in range(3)]
    written = [write_day(root, day, 400, 60, rng, late_share=0.1, vectors=True) for day in days]
    summary = analytics.run(str(root), tmp_path / "report", days=90)
    assert summary["days"] == 3 and summary["first_day"] == days[0] and summary["searches"] == 1200
    firsts = {q: r for w in written for q, r in w["first_click"].items()}
    assert summary["clicks"] == len(firsts)  # the clicks filed the day after found their searches too
    assert summary["click_share"] == pytest.approx(len(firsts) / 1200)
    assert summary["mrr"] == pytest.approx(sum(1 / r for r in firsts.values()) / 1200)
    by_rank = {int(row["rank"]): row for row in _csv(tmp_path / "report" / "ctr_by_rank.csv")}
    assert int(by_rank[1]["clicked"]) == sum(r == 1 for r in firsts.values())
    assert int(by_rank[1]["shown"]) == 1200
    zero = _csv(tmp_path / "report" / "zero_click_filters.csv")
    assert all(int(row["clicked"]) == 0 for row in zero)
    groups = _csv(tmp_path / "report" / "missed_demand.csv")
    assert summary["grouped_by"] == "vectors" and sum(int(g["queries"]) for g in groups) == summary["low_searches"]
    # the lowest tenth of the unfiltered photo searches: about 810, as a quarter are "more like this" and a tenth of
    # the rest filtered, neither of which is missed demand
    assert summary["low_searches"] == pytest.approx(81, abs=15)
    for picture in ("searches.png", "ctr_by_rank.png", "best_scores.png", "ab.png"):
        assert (tmp_path / "report" / picture).stat().st_size > 5000
    assert "## A/B test" in (tmp_path / "report" / "report.md").read_text()
    only_last = analytics.run(str(root), tmp_path / "last", days=1)
    assert only_last["searches"] == 400 and only_last["first_day"] == days[-1]
    with pytest.raises(analytics.StageError, match="--days"):
        analytics.run(str(root), tmp_path / "x", days=91)
    with pytest.raises(analytics.StageError, match="index"):
        analytics.run(str(root), tmp_path / "x", index=tmp_path / "no-index")
    with pytest.raises(analytics.StageError, match="no query events"):
        analytics.run(str(tmp_path / "nothing"), tmp_path / "x")


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_events_survive_no_more_loss_than_the_queue_under_kill_9(demo_index: Path, tmp_path: Path) -> None:
    """SIGKILL both workers right after their last answer: what they had written is recovered by the workers that
    replace them; only the records still queued at the kill can be lost."""
    from benchmarks.common import free_port, health, multipart, start_gunicorn, stop

    folder = tmp_path / "events"
    port = free_port()
    process, pids = start_gunicorn(demo_index / "index" / "current", port, 2, tmp_path / "cache", deadline_s=120,
                                   env={"EVENTS_DIR": str(folder), "RELOAD_CHECK_S": "0"})
    base = f"http://127.0.0.1:{port}"
    answered = []
    try:
        import urllib.request

        body, content_type = multipart("image", "q.jpg", _photo(demo_index))
        for n in range(200):
            request = urllib.request.Request(f"{base}/api/search?k=3", data=body,
                                             headers={"Content-Type": content_type, "X-Client-Id": f"c{n % 7}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answered.append(json.loads(response.read())["query_id"])
        for pid in pids:
            os.kill(pid, 9)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the master forks new workers, which recover the killed ones' files
            left = [p for pid in pids for p in (folder / events.OPEN_DIR).glob(f"*.{pid}.*")]
            if not left:
                break
            time.sleep(0.2)
        health(base)
    finally:
        stop(process)
    recorded = {r["query_id"] for r in _records(folder, events.QUERIES)}
    lost = len(set(answered) - recorded)
    print(f"\nkill -9 after {len(answered)} answered searches: {lost} query records lost")
    assert recorded <= set(answered)
    assert lost <= 4, f"{lost} of {len(answered)} lost"


def test_a_simulated_day_shows_the_arm_shoppers_prefer(own_index: Path, tmp_path: Path) -> None:
    """Shoppers play a day through the page's API calls against gunicorn serving an A/B test (the base against a
    delta over it) and click 1.6 times as readily on the delta's answers; the report must find arm B better, with
    an interval around what the click model implies."""
    from benchmarks.common import free_port, start_gunicorn, stop
    from pipeline import remove
    from scripts.simulate_shoppers import Day, catalog_photos

    base = (own_index / "index" / "current").resolve()
    gone = next(json.loads(line) for line in (base / "items.jsonl").open())["product_id"]
    delta = own_index / "index" / remove.run(own_index, [str(gone)])["version"]
    folder = tmp_path / "events"
    port = free_port()
    process, _ = start_gunicorn(base, port, 2, tmp_path / "cache", deadline_s=120, env={
        "EVENTS_DIR": str(folder), "RELOAD_CHECK_S": "0", "AB_ARTIFACTS": str(delta), "AB_SHARE": "0.5",
        "AB_NAME": "simulated-day"})
    try:
        day = Day(f"http://127.0.0.1:{port}", catalog_photos(own_index / "catalog"), shoppers=240, searches=4,
                  prefer=delta.name, lift=1.6, seed=11)
        played = day.run(threads=4)
    finally:
        stop(process)  # SIGTERM: each worker writes what it queued and closes its files
    summary = analytics.run(str(folder), tmp_path / "report", days=1, index=base)
    truth = played["versions"]
    arms = {row["arm"]: row for row in summary["arms"]}
    assert arms[CONTROL]["queries"] == truth[base.name]["queries"]
    assert arms[TREATMENT]["queries"] == truth[delta.name]["queries"]
    assert arms[TREATMENT]["ctr"] == pytest.approx(truth[delta.name]["ctr"])  # every click reached the report
    ctr = next(c for c in summary["ab"] if c["metric"] == "ctr")
    implied = truth[delta.name]["expected_ctr"] - truth[base.name]["expected_ctr"]
    print(f"\nsimulated day: CTR A {arms[CONTROL]['ctr']:.3f} B {arms[TREATMENT]['ctr']:.3f}, difference "
          f"{ctr['difference']:+.3f} [{ctr['ci_low']:+.3f}, {ctr['ci_high']:+.3f}], p {ctr['p_value']:.2g}; the "
          f"model implies {implied:+.3f}")
    assert ctr["significant"] and ctr["difference"] > 0 and ctr["ci_low"] <= implied <= ctr["ci_high"]
    mrr = next(c for c in summary["ab"] if c["metric"] == "mrr")
    assert mrr["difference"] > 0
    assert summary["low_searches"] > 0 and (tmp_path / "report" / "ab.png").is_file()
    assert (tmp_path / "report" / "missed_demand.png").stat().st_size > 5000  # the index's thumbnails


def test_events_ship_to_s3_and_the_report_reads_them_there(s3_server: str, tmp_path: Path) -> None:
    """What Beanstalk does: closed files go to s3://BUCKET/analytics (moto's server), a failed upload puts its file
    back for the next round, and the report reads the bucket as it reads a folder."""
    from runtime.storage import s3_client

    s3_client().create_bucket(Bucket="shop")
    log = EventLog(tmp_path / "events", target="s3://shop/analytics/", rotate_s=0.0, ship_s=3600)
    log.start()
    stamp = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()
    for n in range(3):
        log.emit(events.QUERIES, {"query_id": f"q{n}", "client_id": "c", "timestamp": stamp + n,
                                  "query_response_hit_ids": ["1", "2"],
                                  "query_attributes": {"kind": "upload", "scores": [0.9, 0.8], "arm": "A"}})
    log.emit(events.EVENTS, {"action_name": "click", "query_id": "q1", "client_id": "c", "timestamp": stamp + 5,
                             "event_attributes": {"object": {"object_id": "2"}, "position": {"ordinal": 2}}})
    log.flush()
    log.target = "s3://no-such-bucket/analytics"
    with pytest.raises(Exception, match="NoSuchBucket"):
        log.ship()
    assert len(list((tmp_path / "events").glob("*/dt=*/*.jsonl"))) == 2  # put back, not lost
    log.target = "s3://shop/analytics/"
    assert log.ship() == 2
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="shop")["Contents"]]
    assert sorted(k.split("/")[1] for k in keys) == [events.EVENTS, events.QUERIES]
    assert all(k.startswith("analytics/") and "/dt=2026-03-01/" in k for k in keys)
    summary = analytics.run("s3://shop/analytics", tmp_path / "report", days=7)
    assert summary["searches"] == 3 and summary["clicks"] == 1 and summary["mrr"] == pytest.approx(0.5 / 3)
