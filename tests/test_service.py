"""The query service through Flask's test client, over an index built from generated data."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import index
from runtime import products as products_module
from service import create_app
from tests.helpers import free_port, server_timing

TOKEN = "test-admin-token"


@pytest.fixture()
def app(demo_index: Path, tmp_path: Path):
    return create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                       "ADMIN_TOKEN": TOKEN, "ARTIFACTS_CACHE": str(tmp_path / "cache"), "ALLOW_PRIVATE_URLS": True,
                       "MAX_UPLOAD_MB": 1, "URL_TIMEOUT_S": 2.0})


@pytest.fixture()
def client(app):
    return app.test_client()


def photo(colour=(30, 60, 200), size=(200, 160), fmt="JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def catalog_photo(demo_index: Path) -> bytes:
    return next((demo_index / "catalog" / "images").rglob("*.jpg")).read_bytes()


def upload(client, data: bytes, query: str = "", name: str = "photo.jpg"):
    return client.post(f"/api/search{query}", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_search_by_uploaded_photo(client, demo_index: Path) -> None:
    response = upload(client, catalog_photo(demo_index), "?k=5")
    assert response.status_code == 200
    body = response.get_json()
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99  # the catalog's own photo comes first
    assert set(results[0]) == {"rank", "product_id", "name", "category", "score", "metadata", "image_url", "images",
                               "matched_image"}
    assert results[0]["image_url"] == f"/images/{results[0]['product_id']}"
    assert set(body["timings_ms"]) == {"parse", "decode", "embed", "search"}
    timing = server_timing(response.headers["Server-Timing"])  # the same stages, and the whole request in Flask
    assert list(timing) == ["parse", "decode", "embed", "search", "app"]
    assert timing["app"] >= sum(body["timings_ms"].values()) - 0.05  # the JSON's figures are rounded to 0.01 ms


def test_search_by_base64_and_by_url(client, tmp_path: Path) -> None:
    data = photo()
    encoded = base64.b64encode(data).decode()
    by_b64 = client.post("/api/search", json={"image_base64": encoded, "k": 3})
    assert by_b64.status_code == 200 and len(by_b64.get_json()["results"]) == 3
    data_url = client.post("/api/search", json={"image_base64": "data:image/jpeg;base64," + encoded, "k": 3})
    assert data_url.get_json()["results"] == by_b64.get_json()["results"]
    (tmp_path / "p.jpg").write_bytes(data)
    with _static_server(tmp_path) as base:
        by_url = client.post("/api/search", json={"image_url": f"{base}/p.jpg", "k": 3})
    assert by_url.status_code == 200
    assert [r["product_id"] for r in by_url.get_json()["results"]] == \
        [r["product_id"] for r in by_b64.get_json()["results"]]


@pytest.mark.parametrize("force_annoy", [False, True], ids=["exact-scan", "annoy-overfetch"])
def test_filters_return_exactly_k_whenever_k_match(client, app, monkeypatch, force_annoy: bool) -> None:
    searcher = app.extensions["visual_search"].get()
    if force_annoy:
        monkeypatch.setattr(products_module, "EXACT_FILTER_BELOW", 0)
        monkeypatch.setattr(searcher.products, "exact", False)
    counts: dict[str, int] = {}
    for item in searcher.items:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    data = photo((240, 200, 40))
    for category, count in counts.items():
        for k in (1, 5, count, count + 3):
            body = upload(client, data, f"?k={k}&category={category}").get_json()
            got = [r["category"] for r in body["results"]]
            assert got == [category] * min(k, count), (category, k)
    women_bags = [i for i in searcher.items if i["category"] == "Handbags" and i["metadata"].get("gender") == "Women"]
    body = upload(client, data, "?k=50&category=Handbags&gender=Women").get_json()
    assert len(body["results"]) == len(women_bags)
    two = upload(client, data, "?k=8&category=Caps&category=Watches").get_json()["results"]
    assert len(two) == 8 and {r["category"] for r in two} <= {"Caps", "Watches"}
    json_filters = client.post("/api/search", json={"image_base64": base64.b64encode(data).decode(), "k": 4,
                                                    "filters": {"baseColour": ["Black", "White"]}}).get_json()
    assert all(r["metadata"]["baseColour"] in ("Black", "White") for r in json_filters["results"])


@pytest.mark.parametrize("exact", [True, False], ids=["exact-scan", "annoy"])
def test_more_like_this_uses_the_stored_vector(client, app, monkeypatch, exact: bool) -> None:
    searcher = app.extensions["visual_search"].get()
    monkeypatch.setattr(searcher.products, "exact", exact)
    product_id = searcher.items[7]["product_id"]
    def no_encoder_pass(images: np.ndarray) -> np.ndarray:
        raise AssertionError("'more like this' ran the encoder instead of reading the stored vector")

    monkeypatch.setattr(searcher.extractor, "embed", no_encoder_pass)
    monkeypatch.setattr(searcher.extractor, "features", no_encoder_pass)
    body = client.get(f"/api/products/{product_id}/similar?k=6").get_json()
    ids = [r["product_id"] for r in body["results"]]
    assert len(ids) == 6 and product_id not in ids and body["product"]["product_id"] == product_id
    vectors = np.array(searcher.vectors)
    exact = np.argsort(-(vectors @ vectors[7]))[1:7]
    assert ids == [searcher.items[i]["product_id"] for i in exact]
    filtered = client.get(f"/api/products/{product_id}/similar?k=3&category=Socks").get_json()["results"]
    assert [r["category"] for r in filtered] == ["Socks"] * 3


def test_product_lookup_and_images(client, app, demo_index: Path) -> None:
    item = app.extensions["visual_search"].get().items[0]
    body = client.get(f"/api/products/{item['product_id']}").get_json()
    assert body["name"] == item["name"] and body["metadata"]["baseColour"]
    image = client.get(body["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(image.data)).size[0] <= 320
    assert client.get("/images/..%2F..%2Fmanifest.json").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data and b"https://" not in page.data


def test_image_base_url_replaces_image_links(demo_index: Path, tmp_path: Path) -> None:
    app = create_app({"ARTIFACTS": str(demo_index / "index"), "LOAD_IN_BACKGROUND": False,
                      "ARTIFACTS_CACHE": str(tmp_path), "IMAGE_BASE_URL": "https://cdn.example.com/shop/"})
    item = app.extensions["visual_search"].get().items[0]
    url = app.test_client().get(f"/api/products/{item['product_id']}").get_json()["image_url"]
    assert url == f"https://cdn.example.com/shop/{item['thumbnail']}"


def test_health_is_503_until_the_index_is_loaded(tmp_path: Path) -> None:
    app = create_app({"ARTIFACTS": str(tmp_path / "no-index"), "ARTIFACTS_CACHE": str(tmp_path)})
    client = app.test_client()
    for _ in range(100):
        if app.extensions["visual_search"].error:
            break
        threading.Event().wait(0.05)
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "error"
    # a shopper (or a scanner) learns "not ready", never where the index lives nor why it failed
    assert health.get_json()["error"]["code"] == "not_ready" and str(tmp_path) not in health.get_data(as_text=True)
    search = upload(client, photo())
    assert search.status_code == 503 and search.get_json()["error"]["code"] == "not_ready"
    assert search.headers["Retry-After"] and str(tmp_path) not in search.get_data(as_text=True)
    app.config["ADMIN_TOKEN"] = TOKEN  # the operator asks with the token and learns why
    health = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert health["error"]["code"] == "load_failed" and "no index at" in health["error"]["message"]


def scrape(client) -> dict[tuple, float]:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").data.decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_health_and_metrics_when_ready(client) -> None:
    assert set(client.get("/health").get_json()) == {"status", "version", "items"}  # no internals without the token
    health = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert health["status"] == "ok" and health["items"] > 50 and health["encoder"].startswith("hub:")
    assert health["refused"] is None
    before = scrape(client)
    for _ in range(3):
        upload(client, photo())
    client.get("/api/products/nope")
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("visual_search_requests_total", endpoint="/api/search", method="POST", status="200") == 3
    assert delta("visual_search_requests_total", endpoint="/api/products/<path:product_id>", method="GET",
                 status="404") == 1
    assert delta("visual_search_errors_total", **{"class": "4xx"}) == 1
    assert all(delta("visual_search_search_stage_seconds_count", stage=stage) == 3
               for stage in ("parse", "decode", "embed", "search"))
    assert after[("visual_search_ready", ())] == 1 and after[("visual_search_index_items", ())] == health["items"]


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (8000, 6000)).save(out, "PNG")
    return out.getvalue()


BAD_UPLOADS = [
    ("no-file", lambda c: c.post("/api/search", data={}), 400, "no_image"),
    ("wrong-field", lambda c: c.post("/api/search", data={"photo": (io.BytesIO(photo()), "a.jpg")}), 400, "no_image"),
    ("empty-file", lambda c: upload(c, b""), 400, "image_empty"),
    ("not-an-image", lambda c: upload(c, b"hello, I am a text file\n" * 20, name="a.jpg"), 415, "image_format"),
    ("pdf", lambda c: upload(c, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + b"0" * 500, name="a.pdf"), 415,
     "image_format"),
    ("svg", lambda c: upload(c, b'<svg xmlns="http://www.w3.org/2000/svg" width="99" height="99"/>', name="a.svg"),
     415, "image_format"),
    ("truncated", lambda c: upload(c, photo(size=(400, 400))[:700]), 400, "image_corrupt"),
    ("over-size-limit", lambda c: upload(c, np.random.default_rng(0).bytes(int(1.5 * 2**20))), 413,
     "too_large"),
    ("over-pixel-limit", lambda c: upload(c, _bomb(), name="bomb.png"), 413, "image_pixels"),
    ("malformed-multipart", lambda c: c.post("/api/search", data=b"--b\r\nbroken",
                                             content_type="multipart/form-data; boundary=b"), 400, "no_image"),
    ("bbox-reversed", lambda c: upload(c, photo(), "?bbox=0.6,0.2,0.1,0.9"), 400, "bad_bbox"),
    ("bbox-three-numbers", lambda c: upload(c, photo(), "?bbox=0,0,1"), 400, "bad_bbox"),
    ("bbox-out-of-range", lambda c: upload(c, photo(), "?bbox=0,0,1.5,1"), 400, "bad_bbox"),
    ("bbox-empty-box", lambda c: upload(c, photo(), "?bbox=0.2,0.2,0.2,0.5"), 400, "bad_bbox"),
    ("bbox-not-numbers", lambda c: upload(c, photo(), "?bbox=a,b,c,d"), 400, "bad_bbox"),
    ("bbox-nan", lambda c: upload(c, photo(), "?bbox=nan,0,1,1"), 400, "bad_bbox"),
    ("bbox-json-not-a-list", lambda c: c.post("/api/search", json={"bbox": {"x": 0}, "image_base64": "AA=="}), 400,
     "bad_bbox"),
    ("bbox-json-boolean", lambda c: c.post("/api/search", json={"bbox": [0, 0, True, 1], "image_base64": "AA=="}),
     400, "bad_bbox"),
    ("crop-too-small", lambda c: upload(c, photo(), "?bbox=0,0,0.1,0.1"), 422, "crop_too_small"),
    ("min-score-not-a-number", lambda c: upload(c, photo(), "?min_score=high"), 400, "bad_min_score"),
    ("min-score-out-of-range", lambda c: upload(c, photo(), "?min_score=1.5"), 400, "bad_min_score"),
    ("collapse-not-boolean", lambda c: upload(c, photo(), "?collapse=maybe"), 400, "bad_collapse"),
    ("similar-bad-min-score", lambda c: c.get("/api/products/10000/similar?min_score=-2"), 400, "bad_min_score"),
    ("k-zero", lambda c: upload(c, photo(), "?k=0"), 400, "bad_k"),
    ("k-too-big", lambda c: upload(c, photo(), "?k=101"), 400, "bad_k"),
    ("k-not-a-number", lambda c: upload(c, photo(), "?k=ten"), 400, "bad_k"),
    ("k-fraction", lambda c: c.post("/api/search", json={"image_base64": "", "k": 2.5}), 400, "bad_k"),
    ("unknown-filter", lambda c: c.post("/api/search", json={"filters": {"colour": "Red"}, "image_base64": "AA=="}),
     400, "unknown_filter"),
    ("filters-not-object", lambda c: c.post("/api/search", json={"filters": ["x"], "image_base64": "AA=="}), 400,
     "bad_filters"),
    ("unknown-product", lambda c: c.get("/api/products/no-such-id"), 404, "unknown_product"),
    ("unknown-product-similar", lambda c: c.get("/api/products/no-such-id/similar"), 404, "unknown_product"),
    ("similar-bad-k", lambda c: c.get("/api/products/10000/similar?k=-1"), 400, "bad_k"),
    ("malformed-json", lambda c: c.post("/api/search", data="{not json", content_type="application/json"), 400,
     "malformed_json"),
    ("json-not-object", lambda c: c.post("/api/search", json=["image_url"]), 400, "malformed_json"),
    ("bad-base64", lambda c: c.post("/api/search", json={"image_base64": "%%%not base64%%%"}), 400,
     "bad_image_base64"),
    ("url-not-http", lambda c: c.post("/api/search", json={"image_url": "file:///etc/passwd"}), 400,
     "bad_image_url"),
    ("url-unreachable", lambda c: c.post("/api/search", json={"image_url": f"http://127.0.0.1:{free_port()}/a.jpg"}),
     400, "url_unreachable"),
    ("wrong-method-search", lambda c: c.get("/api/search"), 405, "method_not_allowed"),
    ("wrong-method-product", lambda c: c.delete("/api/products/10000"), 405, "method_not_allowed"),
    ("unknown-route", lambda c: c.get("/api/nothing-here"), 404, "not_found"),
]


@pytest.mark.parametrize("send, status, code", [b[1:] for b in BAD_UPLOADS], ids=[b[0] for b in BAD_UPLOADS])
def test_bad_input_is_a_json_4xx_and_the_app_keeps_serving(client, demo_index: Path, send, status: int,
                                                            code: str) -> None:
    response = send(client)
    assert response.status_code == status, response.data[:300]
    error = response.get_json()["error"]
    assert error["code"] == code and error["status"] == status and len(error["message"]) > 10
    assert "app" in server_timing(response.headers["Server-Timing"])  # timed like any answer
    assert upload(client, catalog_photo(demo_index)).status_code == 200


def test_url_errors_non_image_and_private_addresses(client, app, tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<html>a web page, not a photo</html>" * 10)
    with _static_server(tmp_path) as base:
        non_image = client.post("/api/search", json={"image_url": f"{base}/page.html"})
        missing = client.post("/api/search", json={"image_url": f"{base}/missing.jpg"})
        app.config["ALLOW_PRIVATE_URLS"] = False
        private = client.post("/api/search", json={"image_url": f"{base}/page.html"})
        metadata = client.post("/api/search", json={"image_url": "http://169.254.169.254/latest/meta-data/"})
    assert non_image.status_code == 415 and non_image.get_json()["error"]["code"] == "image_format"
    assert missing.status_code == 400 and "HTTP 404" in missing.get_json()["error"]["message"]
    assert private.status_code == 400 and "private or local address" in private.get_json()["error"]["message"]
    assert metadata.status_code == 400 and metadata.get_json()["error"]["code"] == "bad_image_url"


def test_reload_needs_the_token(client, demo_index: Path, tmp_path: Path) -> None:
    assert client.post("/api/admin/reload").status_code == 401
    assert client.post("/api/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
    disabled = create_app({"ARTIFACTS": str(demo_index / "index"), "LOAD_IN_BACKGROUND": False,
                           "ARTIFACTS_CACHE": str(tmp_path)}).test_client()
    response = disabled.post("/api/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403 and "ADMIN_TOKEN" in response.get_json()["error"]["message"]
    bad = client.post("/api/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, json={"version": "nothing"})
    assert bad.status_code == 404 and "still serving" in bad.get_json()["error"]["message"]
    elsewhere = client.post("/api/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"artifacts": str(tmp_path)})
    assert elsewhere.status_code == 400 and "pointer" in elsewhere.get_json()["error"]["message"]
    again = client.post("/api/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})  # check the pointer now
    assert again.status_code == 200 and again.get_json()["version"] == again.get_json()["previous_version"]
    assert client.get("/health").get_json()["status"] == "ok"


def test_reload_swaps_versions_with_no_failed_request(own_index: Path, tmp_path: Path) -> None:
    app = create_app({"ARTIFACTS": str(own_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                      "ADMIN_TOKEN": TOKEN, "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    first = app.extensions["visual_search"].get().version
    second = index.run(own_index, trees=4)["version"]
    data = photo((200, 40, 40))
    failures, done, stop = [], [0], threading.Event()

    def hammer() -> None:
        client = app.test_client()
        while not stop.is_set() and done[0] < 2000:
            response = upload(client, data, "?k=5")
            if response.status_code != 200 or len(response.get_json()["results"]) != 5:
                failures.append(response.status_code)
            done[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    admin = app.test_client()
    versions = []
    for target in (second, first, second):
        response = admin.post("/api/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                              json={"version": target})
        versions.append(response.get_json()["version"])
        assert (own_index / "index" / "current").resolve().name == target  # the pointer moved: the truth
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert versions == [second, first, second]
    assert done[0] > 10 and failures == []
    assert admin.get("/health").get_json()["version"] == second


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _static_server:  # noqa: N801 - used as a context manager
    """Serve a folder on 127.0.0.1 for the duration of a with block."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a, **k: _Quiet(*a, directory=str(folder), **k)  # noqa: E731
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def test_the_artifacts_cache_keeps_the_newest_versions(tmp_path: Path) -> None:
    import os

    from runtime.versions import KEEP_VERSIONS
    from service.store import prune_cache

    prefix = tmp_path / "bucket" / "prod"
    for age, name in enumerate(["v5", "v4", "v3", "v2", "v1"]):
        (prefix / name).mkdir(parents=True)
        (prefix / name / "manifest.json").write_text("{}")
        os.utime(prefix / name / "manifest.json", (1e9 - age * 60, 1e9 - age * 60))
    (prefix / "not-a-version").mkdir()
    os.utime(prefix / "v1" / "manifest.json", (1e9 + 60, 1e9 + 60))  # just fetched (the newest), e.g. a rollback
    removed = prune_cache(prefix / "v1")
    assert KEEP_VERSIONS == 3
    assert sorted(p.name for p in removed) == ["v2", "v3"]
    assert sorted(p.name for p in prefix.iterdir()) == ["not-a-version", "v1", "v4", "v5"]
