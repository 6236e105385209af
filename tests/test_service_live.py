"""The service as it runs in production: gunicorn workers over HTTP, artifacts from S3, a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, multipart

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture()
def gunicorn_server(demo_index: Path, tmp_path: Path):
    """gunicorn with 2 gthread workers on 127.0.0.1, started from the Procfile's config, over the demo index."""
    port = free_port()
    env = {**os.environ, "ARTIFACTS": str(demo_index / "index" / "current"), "GUNICORN_BIND": f"127.0.0.1:{port}",
           "WEB_CONCURRENCY": "2", "ARTIFACTS_CACHE": str(tmp_path / "cache"), "ADMIN_TOKEN": "t0k"}
    log = open(tmp_path / "gunicorn.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "application:application"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    ready = 0
    while time.monotonic() < deadline and ready < 6:  # several 200s in a row: both workers have loaded
        try:
            ready = ready + 1 if http(f"{base}/health", timeout=5)[0] == 200 else 0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            ready = 0
        time.sleep(0.3)
    try:
        assert ready >= 6, (tmp_path / "gunicorn.log").read_text()[-3000:]
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_gunicorn_two_workers_answer_over_http(gunicorn_server: str, demo_index: Path) -> None:
    image = next((demo_index / "catalog" / "images").rglob("*.jpg"))
    body, content_type = multipart("image", image.name, image.read_bytes())
    pids = set()
    for _ in range(12):
        status, result = http(f"{gunicorn_server}/api/search?k=4", body, {"Content-Type": content_type})
        assert status == 200 and len(result["results"]) == 4
        metrics = urllib.request.urlopen(f"{gunicorn_server}/metrics", timeout=10).read().decode()
        pids |= {line.split('worker="')[1].split('"')[0] for line in metrics.splitlines() if 'worker="' in line}
    assert len(pids) == 2  # both workers served requests
    status, error = http(f"{gunicorn_server}/api/search", b"garbage", {"Content-Type": "application/json"})
    assert status == 400 and error["error"]["code"] == "malformed_json"
    product = result["results"][0]["product_id"]
    status, similar = http(f"{gunicorn_server}/api/products/{product}/similar?k=3")
    assert status == 200 and len(similar["results"]) == 3

    # A reload sent to one worker reaches the other too.
    from pipeline import index

    new_version = index.run(demo_index, trees=4, keep=10)["version"]
    status, reloaded = http(f"{gunicorn_server}/api/admin/reload",
                            json.dumps({"artifacts": str(demo_index / "index" / new_version)}).encode(),
                            {"Content-Type": "application/json", "Authorization": "Bearer t0k"})
    assert status == 200 and reloaded["version"] == new_version
    serving: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(serving) == 2 and set(serving.values()) == {new_version}):
        status, health = http(f"{gunicorn_server}/health")
        serving[health["worker"]] = health["version"]
        time.sleep(0.2)
    assert set(serving.values()) == {new_version} and len(serving) == 2, serving


def _upload_index(folder: Path, bucket: str, prefix: str) -> None:
    from pipeline.storage import s3_client

    client = s3_client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{folder.name}/{path.relative_to(folder).as_posix()}")
    client.put_object(Bucket=bucket, Key=f"{prefix}/CURRENT", Body=folder.name.encode())


def test_artifacts_from_s3_are_verified_and_tampering_is_refused(s3_server: str, demo_index: Path,
                                                                 tmp_path: Path) -> None:
    from pipeline.storage import s3_client
    from service import create_app

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
    fresh = create_app({"ARTIFACTS": "s3://artifacts/shop", "ARTIFACTS_CACHE": str(tmp_path / "fresh")})
    holder = fresh.extensions["visual_search"]
    for _ in range(200):
        if holder.error or holder.searcher:
            break
        time.sleep(0.05)
    response = fresh.test_client().get("/health")
    assert response.status_code == 503
    assert "items.jsonl does not match its sha256" in response.get_json()["message"]
    # A tampered file already in a warm cache is caught too: the reader re-checks every hash on load.
    cached = tmp_path / "cache" / "artifacts" / "shop" / folder.name / "items.jsonl"
    cached.write_bytes(tampered)
    with pytest.raises(ValueError, match="sha256"):
        from service.searcher import Searcher

        Searcher(cached.parent)


def test_shopper_page_in_a_real_browser(gunicorn_server: str, demo_index: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run this test")
    from playwright.sync_api import sync_playwright

    image = next((demo_index / "catalog" / "images" / "Watches").glob("*.jpg"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900})  # a phone-sized window
            page.goto(gunicorn_server + "/", wait_until="networkidle")
            assert page.locator("#category option").count() > 5  # categories loaded from /api/filters
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#results .card", timeout=30_000)
            cards = page.locator("#results .card")
            assert cards.count() == 20
            assert "match" in cards.first.inner_text()
            page.wait_for_function("document.querySelector('#results .card img').naturalWidth > 0", timeout=10_000)
            page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
            first_name = page.locator("#results .card .name").nth(1).inner_text()
            cards.nth(1).click()
            page.wait_for_selector("#similar-to:not([hidden])", timeout=30_000)
            assert page.locator("#similar-name").inner_text() == first_name
            page.wait_for_function("document.querySelectorAll('#results .card').length === 20", timeout=30_000)
            page.select_option("#category", "Watches")
            page.set_input_files("#file", str(image))
            page.wait_for_function("[...document.querySelectorAll('#results .card .score')].every("
                                   "e => e.textContent.startsWith('Watches'))", timeout=30_000)
            shutil.copy(tmp_path / "results.png", tmp_path / "last.png")
        finally:
            browser.close()
