"""The service as it runs in production: gunicorn workers over HTTP, artifacts from S3, a real browser."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from pipeline import index
from runtime import versions
from runtime.storage import s3_client
from scripts import deploy
from scripts.beanstalk import instance_bucket_policy
from service import create_app
from service.searcher import Searcher
from tests.conftest import gunicorn_over
from tests.helpers import health as health_of
from tests.helpers import http_json as http
from tests.helpers import multipart

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@pytest.fixture()
def gunicorn_server(own_index: Path, tmp_path: Path):
    """gunicorn with 2 gthread workers on 127.0.0.1, started from the Procfile's config, over a copy of the demo
    index (the test's `own_index`); yields its base URL once both workers have loaded the index."""
    with gunicorn_over(own_index / "index" / "current", tmp_path, {"ADMIN_TOKEN": "t0k", "LOG_LEVEL": "info",
                                                                   "EVENTS_DIR": str(tmp_path / "events")}) as base:
        yield base


def scrape(base: str) -> dict[tuple, float]:
    """One /metrics scrape through the socket (whichever worker answers) as {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_gunicorn_two_workers_answer_over_http(gunicorn_server: str, own_index: Path) -> None:
    image = next((own_index / "catalog" / "images").rglob("*.jpg"))
    body, content_type = multipart("image", image.name, image.read_bytes())
    for _ in range(12):
        status, result = http(f"{gunicorn_server}/api/search?k=4", body, {"Content-Type": content_type})
        assert status == 200 and len(result["results"]) == 4
    answered: set[int] = set()
    for asked in range(1, 301):  # the kernel hands sequential connections to whichever worker accepts first:
        answered.add(health_of(gunicorn_server, token="t0k")["worker"])  # at least 30, until both have answered
        if len(answered) == 2 and asked >= 30:
            break
    assert len(answered) == 2  # both workers answered
    # One scrape, answered by one worker, counts every worker's requests.
    for _ in range(3):
        totals = scrape(gunicorn_server)
        search = ("visual_search_requests_total", (("endpoint", "/api/search"), ("method", "POST"), ("status", "200")))
        health = ("visual_search_requests_total", (("endpoint", "/health"), ("method", "GET"), ("status", "200")))
        assert totals[search] == 12
        assert totals[health] >= 30  # plus gunicorn_server's own readiness probes
        assert totals[("visual_search_ready", ())] == 1 and totals[("visual_search_reload_refused", ())] == 0
    # Python's urllib sends the whole body before it reads: it must get the 413 JSON, not a reset connection.
    big, content_type = multipart("image", "big.jpg", os.urandom(12 * 2**20))
    for _ in range(3):
        status, error = http(f"{gunicorn_server}/api/search", big, {"Content-Type": content_type})
        assert status == 413 and error["error"]["code"] == "too_large"
    status, error = http(f"{gunicorn_server}/api/search", b"garbage", {"Content-Type": "application/json"})
    assert status == 400 and error["error"]["code"] == "malformed_json"
    product = result["results"][0]["product_id"]
    status, similar = http(f"{gunicorn_server}/api/products/{product}/similar?k=3")
    assert status == 200 and len(similar["results"]) == 3

    # A reload sent to one worker reaches the other too.
    new_version = index.run(own_index, trees=4)["version"]
    status, reloaded = http(f"{gunicorn_server}/api/admin/reload",
                            json.dumps({"version": new_version}).encode(),
                            {"Content-Type": "application/json", "Authorization": "Bearer t0k"})
    assert status == 200 and reloaded["version"] == new_version
    serving: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(serving) == 2 and set(serving.values()) == {new_version}):
        health = health_of(gunicorn_server, token="t0k")
        serving[health["worker"]] = health["version"]
        time.sleep(0.2)
    assert set(serving.values()) == {new_version} and len(serving) == 2, serving


def _upload_index(folder: Path, bucket: str, prefix: str) -> None:
    client = s3_client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{folder.name}/{path.relative_to(folder).as_posix()}")
    client.put_object(Bucket=bucket, Key=f"{prefix}/CURRENT", Body=folder.name.encode())


def test_an_admin_reload_on_s3_needs_the_write_of_current_that_deploy_grants(s3_server: str, own_index: Path,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under IAM (moto checks each request against the caller's policy): an instance whose role may only read gets
    a 403 that names the permission, not a 500; the role deploy creates may move CURRENT, and nothing else."""
    import boto3
    from moto.core.authorization import enable_iam_authentication

    client = s3_client()
    client.create_bucket(Bucket="artifacts")
    first = deploy.upload_artifacts(own_index / "index" / "current", "artifacts", "shop")["version"]
    second = index.run(own_index, trees=4)["version"]
    deploy.upload_artifacts(own_index / "index" / "current", "artifacts", "shop")
    versions.write_s3_pointer(client, "artifacts", "shop", first)
    granted = instance_bucket_policy("artifacts", "shop")
    read_only = {**granted, "Statement": [s for s in granted["Statement"] if s["Action"] != ["s3:PutObject"]]}
    iam, keys = boto3.client("iam"), {}
    for user, policy in {"reader": read_only, "instance": granted}.items():
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="artifacts", PolicyDocument=json.dumps(policy))
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    answers = {}
    with enable_iam_authentication():
        for user in ("reader", "instance"):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[user]["AccessKeyId"])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[user]["SecretAccessKey"])
            app = create_app({"ARTIFACTS": "s3://artifacts/shop", "LOAD_IN_BACKGROUND": False, "ADMIN_TOKEN": "t0k",
                              "RELOAD_CHECK_S": 0, "ARTIFACTS_CACHE": str(tmp_path / user)})
            assert app.test_client().get("/health").get_json()["version"] == first  # reading is allowed to both
            response = app.test_client().post("/api/admin/reload", headers={"Authorization": "Bearer t0k"},
                                              json={"version": second})
            answers[user] = (response.status_code, response.get_json())
        with pytest.raises(ClientError, match="AccessDenied"):  # the instance's one write is the pointer
            s3_client().put_object(Bucket="artifacts", Key=f"shop/{second}/items.jsonl", Body=b"x")
    status, body = answers["reader"]
    assert status == 403 and body["error"]["code"] == "reload_forbidden", body
    assert "s3:PutObject" in body["error"]["message"] and f"still serving {first}" in body["error"]["message"]
    assert answers["instance"][0] == 200 and answers["instance"][1]["version"] == second, answers["instance"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    assert versions.read_s3_pointer(s3_client(), "artifacts", "shop") == second


def test_artifacts_from_s3_are_verified_and_tampering_is_refused(s3_server: str, demo_index: Path,
                                                                 tmp_path: Path) -> None:
    client = s3_client()
    client.create_bucket(Bucket="artifacts")
    folder = (demo_index / "index" / "current").resolve()
    _upload_index(folder, "artifacts", "shop")
    app = create_app({"ARTIFACTS": "s3://artifacts/shop", "LOAD_IN_BACKGROUND": False,
                      "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    health = app.test_client().get("/health").get_json()
    assert health["status"] == "ok" and health["version"] == folder.name
    assert (tmp_path / "cache" / "artifacts" / "shop" / folder.name / "index.ann").is_file()

    items_key = f"shop/{folder.name}/items.jsonl"
    original = client.get_object(Bucket="artifacts", Key=items_key)["Body"].read()
    tampered = original.replace(b"Northwind", b"Southwind")  # same size: only the hash can tell
    client.put_object(Bucket="artifacts", Key=items_key, Body=tampered)
    fresh = create_app({"ARTIFACTS": "s3://artifacts/shop", "ARTIFACTS_CACHE": str(tmp_path / "fresh"),
                        "ADMIN_TOKEN": "t0k"})
    holder = fresh.extensions["visual_search"]
    for _ in range(200):
        if holder.error or holder.searcher:
            break
        time.sleep(0.05)
    response = fresh.test_client().get("/health", headers={"Authorization": "Bearer t0k"})
    assert response.status_code == 503
    assert "items.jsonl does not match its sha256" in response.get_json()["error"]["message"]
    # A tampered file already in a warm cache is caught too: the reader re-checks every hash on load.
    cached = tmp_path / "cache" / "artifacts" / "shop" / folder.name / "items.jsonl"
    cached.write_bytes(tampered)
    with pytest.raises(ValueError, match="sha256"):
        Searcher(cached.parent)


def test_shopper_page_in_a_real_browser(gunicorn_server: str, own_index: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run this test")
    from playwright.sync_api import sync_playwright

    image = next((own_index / "catalog" / "images" / "Watches").glob("*.jpg"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900}, has_touch=True)  # a phone
            sent: list = []
            page.on("request", lambda r: sent.append(r) if "/api/" in r.url else None)
            page.goto(gunicorn_server + "/", wait_until="networkidle")
            assert page.locator("#facet-category option").count() > 5  # facets loaded from /api/filters
            assert not page.locator("#facet-gender").is_visible()  # the others are folded under "More filters"
            page.click("#more-filters summary")
            for column in ("gender", "baseColour", "season", "usage"):  # every low-cardinality column, with counts
                assert page.locator(f"#facet-{column} option").count() > 2
                assert "(" in page.locator(f"#facet-{column} option").nth(1).inner_text()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#results .card", timeout=30_000)
            cards = page.locator("#results .card")
            assert cards.count() == 20
            assert "match" in cards.first.inner_text()
            page.wait_for_function("document.querySelector('#results .card img').naturalWidth > 0", timeout=10_000)
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
            # 20 result cards run below the fold of a phone, in one column no wider than the phone.
            assert shot.width == 420 and shot.height > 2 * 900, shot.size
            first_name = page.locator("#results .card .name").nth(1).inner_text()
            reported = scrape(gunicorn_server).get(("visual_search_requests_total", (
                ("endpoint", "/api/events"), ("method", "POST"), ("status", "202"))), 0.0)
            cards.nth(1).click()
            page.wait_for_selector("#similar-to:not([hidden])", timeout=30_000)
            assert page.locator("#similar-name").inner_text() == first_name
            _the_page_keeps_a_client_id_and_reports_the_click(page, sent, gunicorn_server, reported)
            page.wait_for_function("document.querySelectorAll('#results .card').length === 20", timeout=30_000)
            page.select_option("#facet-category", "Watches")
            page.set_input_files("#file", str(image))
            page.wait_for_function("[...document.querySelectorAll('#results .card .score')].every("
                                   "e => e.textContent.startsWith('Watches'))", timeout=30_000)
            _crop_with_mouse_and_finger(page)
            _facets_and_options_reach_the_api(page)
        finally:
            browser.close()


def _the_page_keeps_a_client_id_and_reports_the_click(page, sent: list, base: str, before: float) -> None:
    """Every API call carries the one random id the page keeps, and opening the second result reported a
    "more like this" at rank 2 against the search shown (the service answered 202)."""
    clients = {r.headers.get("x-client-id") for r in sent if "/api/events" not in r.url}
    assert len(clients) == 1 and None not in clients, clients
    assert page.evaluate("localStorage.getItem('visual-search-client-id')") in clients
    searches = [r for r in sent if "/api/search" in r.url]
    query_id = searches[-1].response().json()["query_id"]
    deadline = time.monotonic() + 10
    key = ("visual_search_requests_total", (("endpoint", "/api/events"), ("method", "POST"), ("status", "202")))
    while scrape(base).get(key, 0.0) <= before and time.monotonic() < deadline:
        time.sleep(0.2)  # a beacon is sent after the click's own work; /metrics sums both workers
    assert scrape(base).get(key, 0.0) == before + 1
    beacons = [r for r in sent if "/api/events" in r.url and r.post_data]
    if beacons:  # Chromium hands sendBeacon's body to Playwright only sometimes
        event = json.loads(beacons[-1].post_data)
        assert event["query_id"] == query_id and event["action_name"] == "more_like_this"
        assert event["event_attributes"]["position"] == {"ordinal": 2}


def _drag_box(page, start: tuple[float, float], end: tuple[float, float], touch: bool) -> dict:
    """Drag over the photo from one fraction of it to another (mouse, or a finger through CDP touch events), and
    return the search request the page sends."""
    page.wait_for_function("document.querySelector('#crop-image').naturalWidth > 0", timeout=10_000)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function("window.scrollY === 0", timeout=10_000)
    box = page.locator("#crop-image").bounding_box()
    points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in (start, end)]
    with page.expect_response(lambda r: "/api/search" in r.url and "bbox=" in r.url, timeout=30_000) as answer:
        if touch:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [
                {"x": points[0][0], "y": points[0][1]}]})
            for step in range(1, 6):
                x = points[0][0] + (points[1][0] - points[0][0]) * step / 5
                y = points[0][1] + (points[1][1] - points[0][1]) * step / 5
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        else:
            page.mouse.move(*points[0])
            page.mouse.down()
            page.mouse.move(*points[1], steps=5)
            page.mouse.up()
    return {"url": answer.value.url, "body": answer.value.json()}


def _crop_with_mouse_and_finger(page) -> None:
    """A box drawn over the photo searches that part of it, and the page says so; clearing it searches the whole."""
    from urllib.parse import parse_qs, urlparse

    for touch, (start, end) in ((False, ((0.1, 0.1), (0.6, 0.7))), (True, ((0.3, 0.2), (0.9, 0.8)))):
        sent = _drag_box(page, start, end, touch)
        bbox = [float(v) for v in parse_qs(urlparse(sent["url"]).query)["bbox"][0].split(",")]
        assert all(abs(a - b) < 0.05 for a, b in zip(bbox, [*start, *end], strict=True)), (touch, bbox)
        assert sent["body"]["crop"]["bbox"] == bbox
        page.wait_for_function("document.querySelector('#status').textContent.includes('area you selected')",
                               timeout=30_000)
        assert page.locator("#crop-box").is_visible() and page.locator("#clear-crop").is_visible()
    with page.expect_response(lambda r: "/api/search" in r.url and "bbox=" not in r.url, timeout=30_000):
        page.click("#clear-crop")
    page.wait_for_function("!document.querySelector('#status').textContent.includes('area you selected') && "
                           "document.querySelector('#status').textContent.includes('similar products')",
                           timeout=30_000)
    assert not page.locator("#crop-box").is_visible()


def _facets_and_options_reach_the_api(page) -> None:
    """A facet, the minimum match and "hide near-duplicates" each search again with what they say."""
    page.select_option("#facet-category", "")
    value = page.locator("#facet-gender option").nth(1).get_attribute("value")
    with page.expect_response(lambda r: "/api/search" in r.url and f"gender={value}" in r.url,
                              timeout=30_000) as answer:
        page.select_option("#facet-gender", value)
    results = answer.value.json()["results"]
    assert results and all(r["metadata"]["gender"] == value for r in results)
    with page.expect_response(lambda r: "/api/search" in r.url and "min_score=0.9" in r.url,
                              timeout=30_000) as answer:
        page.select_option("#min-score", "0.9")
    assert all(r["score"] >= 0.9 for r in answer.value.json()["results"])
    page.wait_for_function(f"document.querySelectorAll('#results .card').length === "
                           f"{len(answer.value.json()['results'])}", timeout=30_000)
    assert page.locator("#collapse-label").is_visible()
    with page.expect_response(lambda r: "/api/search" in r.url and "collapse=true" in r.url,
                              timeout=30_000) as answer:
        page.check("#collapse")
    assert answer.value.json()["collapse"] is True


# Playwright does not see a multipart body built from a Blob: the page's fetch is wrapped to keep the photo it sends.
KEEP_SENT_PHOTOS = """
window.sentPhotos = [];
const pageFetch = window.fetch;
window.fetch = async (url, options) => {
  const image = options && options.body instanceof FormData ? options.body.get("image") : null;
  if (image) {
    const bytes = new Uint8Array(await image.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
    window.sentPhotos.push(btoa(text));
  }
  return pageFetch(url, options);
};
"""


def _sent_photo(page) -> bytes:
    """The last photo the page sent to /api/search."""
    import base64

    return base64.b64decode(page.evaluate("window.sentPhotos[window.sentPhotos.length - 1]"))


def test_the_page_sends_a_phone_photo_shrunk_upright_and_boxes_still_map_to_it(
        gunicorn_server: str, own_index: Path, tmp_path: Path) -> None:
    """A 12 MP JPEG stored sideways with an EXIF orientation (as phones save them) leaves the page as an upright
    JPEG of at most 1,024 px, finds its product, and a box reports its size in the pixels of the photo chosen."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run this test")
    from playwright.sync_api import sync_playwright

    from pipeline.catalog.table import read_catalog
    from runtime.layout import Layout

    layout = Layout(own_index)
    catalog = next((own_index / "catalog" / "images" / "Watches").glob("*.jpg"))
    rows = read_catalog(layout.catalog_csv)
    product_id = str(rows[rows["image"] == catalog.relative_to(layout.catalog).as_posix()]["product_id"].iloc[0])
    upright = Image.open(catalog).convert("RGB").resize((3024, 4032), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter, as a phone held upright saves it
    phone = tmp_path / "IMG_0001.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(phone, "JPEG", quality=95, exif=exif.tobytes())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900}, has_touch=True)
            page.add_init_script(KEEP_SENT_PHOTOS)
            page.goto(gunicorn_server + "/", wait_until="networkidle")
            with page.expect_response(lambda r: "/api/search" in r.url, timeout=30_000) as answer:
                page.set_input_files("#file", str(phone))
            photo = _sent_photo(page)
            received = Image.open(io.BytesIO(photo))
            assert received.format == "JPEG" and received.size == (768, 1024), received.size  # upright, shrunk
            assert len(photo) < phone.stat().st_size / 10, (len(photo), phone.stat().st_size)
            assert received.getexif().get(0x0112, 1) == 1  # nothing left for the service to turn
            found = [str(r["product_id"]) for r in answer.value.json()["results"][:3]]
            assert product_id in found, (product_id, found)
            page.wait_for_selector("#results .card", timeout=30_000)
            sent_box = _drag_box(page, (0.2, 0.25), (0.7, 0.75), touch=False)
            status = page.locator("#status")
            page.wait_for_function("document.querySelector('#status').textContent.includes('area you selected')",
                                   timeout=30_000)
            bbox = sent_box["body"]["crop"]["bbox"]
            width, height = round((bbox[2] - bbox[0]) * 3024), round((bbox[3] - bbox[1]) * 4032)
            assert f"{width}\u00d7{height} px of your photo" in status.inner_text(), status.inner_text()
        finally:
            browser.close()
