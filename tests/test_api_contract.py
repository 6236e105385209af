"""The API's input rules (docs/api.md "Parameters") and the defects a fuzzer and a review found, each pinned."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from runtime.versions import KEEP_VERSIONS
from service import create_app
from service.store import prune_cache, serving
from tests.test_service import catalog_photo, photo, upload


@pytest.fixture()
def app(demo_index: Path, tmp_path: Path):
    return create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                       "ARTIFACTS_CACHE": str(tmp_path / "cache"), "ALLOW_PRIVATE_URLS": True, "MAX_UPLOAD_MB": 1,
                       "URL_TIMEOUT_S": 1.0, "RELOAD_CHECK_S": 0})


@pytest.fixture()
def client(app):
    return app.test_client()


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    return response.get_json()["error"]


def test_an_image_number_in_other_digits_is_a_404(client) -> None:
    assert error_of(client.get("/images/10000?n=²"), 404)["code"] == "unknown_image"  # "²".isdigit() is true
    assert error_of(client.get("/images/10000?n=٣"), 404)["code"] == "unknown_image"  # Arabic-Indic three
    assert client.get("/images/10000?n=0").status_code == 200


def test_deeply_nested_json_is_a_400(client) -> None:
    body = "[" * 100_000 + "]" * 100_000
    error = error_of(client.post("/api/search", data=body, content_type="application/json"), 400)
    assert error["code"] == "malformed_json" and "nested" in error["message"]
    nested_filter = '{"image_base64": "AA==", "filters": {"category": ' + "[" * 50 + "]" * 50 + "}}"
    assert error_of(client.post("/api/search", data=nested_filter, content_type="application/json"),
                    400)["code"] == "bad_filters"


@pytest.mark.parametrize("value", [{"$ne": 1}, 3, True, None, ["Watches", {"$gt": ""}], [["Watches"]]])
def test_a_filter_value_is_a_string_or_a_list_of_strings(client, value) -> None:
    error = error_of(client.post("/api/search", json={"image_base64": "AA==", "filters": {"category": value}}), 400)
    assert error["code"] == "bad_filters" and "string" in error["message"]


def test_unknown_parameters_are_ignored_and_named(client, demo_index: Path) -> None:
    response = upload(client, catalog_photo(demo_index), "?utm_source=newsletter&_=1733389200&k=3&gendr=Men")
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert body["ignored"] == ["_", "gendr", "utm_source"] and body["filters"] == {} and len(body["results"]) == 3
    similar = client.get("/api/products/10000/similar?fbclid=x&gender=Men").get_json()
    assert similar["ignored"] == ["fbclid"] and similar["filters"] == {"gender": ["Men"]}
    json_body = client.post("/api/search?utm_campaign=x", json={
        "image_base64": base64.b64encode(catalog_photo(demo_index)).decode(), "colour": "Red"}).get_json()
    assert json_body["ignored"] == ["colour", "utm_campaign"]
    # In the JSON "filters" object a name is a filter by intent: an unknown column there is a 400
    error = error_of(client.post("/api/search", json={"image_base64": "AA==", "filters": {"gendr": "Men"}}), 400)
    assert error["code"] == "unknown_filter" and "gender" in error["message"]


def test_options_come_from_json_then_form_then_query(client, demo_index: Path) -> None:
    data = catalog_photo(demo_index)
    form = client.post("/api/search?k=7", data={"image": (io.BytesIO(data), "a.jpg"), "k": "4"},
                       content_type="multipart/form-data").get_json()
    assert form["k"] == 4
    encoded = base64.b64encode(data).decode()
    assert client.post("/api/search?k=7", json={"image_base64": encoded, "k": 2}).get_json()["k"] == 2
    assert client.post("/api/search?k=7", json={"image_base64": encoded}).get_json()["k"] == 7


def _padded_jpeg(size: int) -> bytes:
    """A real JPEG photo followed by padding to `size` bytes (decoders stop at the end-of-image marker)."""
    data = photo(size=(300, 300))
    return data + b"\0" * (size - len(data))


def test_base64_allows_for_its_four_thirds(client) -> None:
    near_limit = _padded_jpeg(2**20 - 1000)  # under MAX_UPLOAD_MB=1 as bytes, over it as base64 text
    response = client.post("/api/search", json={"image_base64": base64.b64encode(near_limit).decode()})
    assert response.status_code == 200, response.data[:300]
    over = base64.b64encode(_padded_jpeg(2**20 + 1000)).decode()
    assert error_of(client.post("/api/search", json={"image_base64": over}), 413)["code"] == "too_large"


def test_one_code_for_an_image_over_the_size_limit(client, tmp_path: Path) -> None:
    """A body over MAX_CONTENT_LENGTH, a file part over MAX_UPLOAD_MB, base64 and a download over it: `too_large`."""
    huge_body = upload(client, os.urandom(int(1.5 * 2**20)))
    just_over = upload(client, _padded_jpeg(2**20 + 10))
    base64_over = client.post("/api/search", json={"image_base64": base64.b64encode(os.urandom(2**20 + 10)).decode()})
    (tmp_path / "big.jpg").write_bytes(_padded_jpeg(2**20 + 10))
    from tests.test_service import _static_server

    with _static_server(tmp_path) as base:
        url_over = client.post("/api/search", json={"image_url": f"{base}/big.jpg"})
    for response in (huge_body, just_over, base64_over, url_over):
        error = error_of(response, 413)
        assert error["code"] == "too_large" and "MB" in error["message"], error


def _dribbling_server() -> tuple[str, threading.Event]:
    """An HTTP server on 127.0.0.1 that sends its headers, then one byte every 0.2 s until told to stop."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
            try:
                while not stop.wait(0.2):
                    conn.sendall(b"\xff")
            except OSError:
                pass
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/slow.jpg", stop


def test_image_url_has_a_deadline_not_a_per_read_timeout(client) -> None:
    url, stop = _dribbling_server()
    started = time.monotonic()
    try:
        response = client.post("/api/search", json={"image_url": url})
    finally:
        stop.set()
    elapsed = time.monotonic() - started
    error = error_of(response, 400)
    assert error["code"] == "url_unreachable" and "within 1 s" in error["message"], error
    assert elapsed < 3, elapsed  # URL_TIMEOUT_S=1; a per-read timeout would wait for all 100,000 bytes


def test_health_503_is_in_the_error_envelope(tmp_path: Path) -> None:
    app = create_app({"ARTIFACTS": str(tmp_path / "nothing"), "LOAD_IN_BACKGROUND": False, "RELOAD_CHECK_S": 0,
                      "ADMIN_TOKEN": "t"})
    body = app.test_client().get("/health", headers={"Authorization": "Bearer t"}).get_json()
    assert body["status"] == "error" and body["error"]["status"] == 503 and body["error"]["code"] == "load_failed"
    assert "no index at" in body["error"]["message"]


def test_min_score_is_compared_with_the_score_returned(client, demo_index: Path) -> None:
    data = catalog_photo(demo_index)
    scores = [r["score"] for r in upload(client, data, "?k=10").get_json()["results"]]
    for threshold in scores[1:6]:
        kept = [r["score"] for r in upload(client, data, f"?k=10&min_score={threshold}").get_json()["results"]]
        assert kept == [s for s in scores if s >= threshold], (threshold, kept, scores)


def test_a_version_a_worker_serves_is_not_pruned_from_the_cache(demo_index: Path, tmp_path: Path) -> None:
    """Another worker's fetch prunes the cache; the version this one serves stays until it moves on."""
    cache = tmp_path / "cache"
    prefix = cache / "bucket" / "prod"
    served = prefix / "v0"
    shutil.copytree((demo_index / "index" / "current").resolve(), served)
    app = create_app({"ARTIFACTS": str(served), "ARTIFACTS_CACHE": str(cache), "LOAD_IN_BACKGROUND": False,
                      "RELOAD_CHECK_S": 0})
    client = app.test_client()
    assert served.resolve() in serving(cache)
    for age, name in enumerate(["v1", "v2", "v3", "v4"]):  # newer versions, as later publishes fetched them
        (prefix / name).mkdir()
        (prefix / name / "manifest.json").write_text("{}")
        os.utime(prefix / name / "manifest.json", (2e9 + age, 2e9 + age))
    removed = prune_cache(prefix / "v4", in_use=serving(cache))
    assert served.exists() and sorted(p.name for p in removed) == ["v1"] and KEEP_VERSIONS == 3
    assert client.get("/images/10000").status_code == 200
    holder = app.extensions["visual_search"]
    del app, client, holder
    import gc

    gc.collect()
    assert served.resolve() not in serving(cache)  # its holder is gone: the next prune may take it
    assert served in prune_cache(prefix / "v4", in_use=serving(cache))


def test_a_thumbnail_removed_under_a_worker_is_a_503_not_a_500(demo_index: Path, tmp_path: Path) -> None:
    folder = tmp_path / "version"
    shutil.copytree((demo_index / "index" / "current").resolve(), folder)
    client = create_app({"ARTIFACTS": str(folder), "LOAD_IN_BACKGROUND": False, "RELOAD_CHECK_S": 0,
                         "ARTIFACTS_CACHE": str(tmp_path / "cache")}).test_client()
    shutil.rmtree(folder / "thumbs")
    assert error_of(client.get("/images/10000"), 503)["code"] == "image_unavailable"


def test_a_photo_with_trailing_padding_still_decodes() -> None:
    with Image.open(io.BytesIO(_padded_jpeg(50_000))) as image:
        assert image.size == (300, 300)
