"""Limits against abuse in the app (service/limits.py and the parsers): each refuses with a clear 4xx/503 at its
configured value, counts the refusal in /metrics, and leaves honest requests alone."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import create_app
from service.state import EXTENSION
from tests.helpers import slow_image_server


@pytest.fixture()
def app(demo_index: Path, tmp_path: Path):
    return create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                       "ARTIFACTS_CACHE": str(tmp_path / "cache"), "ALLOW_PRIVATE_URLS": True, "URL_TIMEOUT_S": 5.0,
                       "MAX_DECODED_PIXELS": 4_000_000, "MAX_FILTER_VALUES": 5, "MAX_URL_FETCHES": 1,
                       "MAX_COLLAPSE_FETCH": 20})


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size)
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return out.getvalue()


def upload(client, data: bytes, query: str = ""):
    return client.post(f"/api/search{query}", data={"image": (io.BytesIO(data), "p")},
                       content_type="multipart/form-data")


def limited(client, kind: str) -> float:
    text = client.get("/metrics").data.decode()
    line = [x for x in text.splitlines() if x.startswith(f'visual_search_limited_total{{limit="{kind}"}}')]
    return float(line[0].split()[-1]) if line else 0.0


def test_decoded_pixels_count_what_is_decoded_not_what_the_header_says(app) -> None:
    client = app.test_client()
    before = limited(client, "decoded_pixels")
    # 12 MP: as a JPEG it decodes at 1/8 (0.19 MP) and is answered; as a PNG all 12 MP would be decoded
    assert upload(client, encoded((3000, 4000), "JPEG")).status_code == 200
    response = upload(client, encoded((3000, 4000), "PNG"))
    error = response.get_json()["error"]
    assert response.status_code == 413 and error["code"] == "image_pixels", error
    assert "4,000,000" in error["message"] and "send a JPEG or a smaller photo" in error["message"]
    assert upload(client, encoded((1500, 2000), "PNG")).status_code == 200  # 3 MP: under the limit
    assert limited(client, "decoded_pixels") == before + 1


def test_filter_values_are_capped(app) -> None:
    client = app.test_client()
    photo = encoded((200, 200), "JPEG")
    category = app.extensions[EXTENSION].get().columns[0]
    ok = client.post("/api/search", json={"image_base64": base64.b64encode(photo).decode(),
                                          "filters": {category: [f"v{i}" for i in range(5)]}})
    assert ok.status_code == 200, ok.get_json()
    response = upload(client, photo, "?" + "&".join(f"{category}=v{i}" for i in range(6)))
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "too_many_filter_values" and "at most 5" in error["message"]
    assert limited(client, "filter_values") >= 1


def test_collapse_widens_no_further_than_configured(app, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = app.extensions[EXTENSION].get()
    monkeypatch.setattr(searcher, "groups", np.zeros(searcher.count, np.int64))  # every product one group
    fetched: list[int] = []
    search = searcher.ranker.search
    monkeypatch.setattr(searcher.ranker, "search", lambda v, n, *a: fetched.append(n) or search(v, n, *a))
    vector = searcher.embed(np.full((224, 224, 3), 120, np.uint8))
    assert len(searcher.search(vector, 5, collapse=True, max_fetch=20)) == 1
    assert fetched == [5, 20]  # stopped at max_fetch, one group found
    fetched.clear()
    searcher.search(vector, 5, collapse=True)
    assert fetched[-1] == searcher.count  # unbounded, it ranks the whole catalog
    fetched.clear()
    body = app.test_client().get(f"/api/products/{searcher.items[0]['product_id']}/similar?collapse=true&k=5")
    assert body.status_code == 200 and max(fetched) <= 20


@pytest.fixture()
def slow_images():
    """An HTTP server on 127.0.0.1 whose every answer takes 2 s: what a slow (or hostile) image_url is."""
    with slow_image_server(encoded((200, 200), "JPEG"), 2) as url:
        yield url


def test_slow_urls_take_only_their_slots_and_uploads_are_still_answered(app, slow_images: str) -> None:
    client = app.test_client()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(client.post, "/api/search", json={"image_url": slow_images})
        time.sleep(0.5)  # the first download holds the one slot
        started = time.monotonic()
        second = client.post("/api/search", json={"image_url": slow_images})
        busy_s = time.monotonic() - started
        upload_started = time.monotonic()
        uploaded = upload(client, encoded((300, 300), "JPEG"))
        upload_s = time.monotonic() - upload_started
        assert first.result(timeout=30).status_code == 200
    error = second.get_json()["error"]
    assert second.status_code == 503 and error["code"] == "url_fetch_busy" and second.headers["Retry-After"] == "1"
    assert busy_s < 1.0, busy_s  # refused at once, not after waiting for the slot
    assert uploaded.status_code == 200 and upload_s < 1.5, upload_s
    assert limited(client, "url_fetches") >= 1
    assert client.post("/api/search", json={"image_url": slow_images}).status_code == 200  # the slot came back
