"""Shopper features over the demo index: crop a box of the photo, every facet, min_score, near-duplicates."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import duplicates, index
from pipeline.common.errors import StageError
from runtime.duplicate_groups import find_groups, product_vectors
from service import create_app


@pytest.fixture()
def app(demo_index: Path, tmp_path: Path):
    return create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "c"),
                       "RELOAD_CHECK_S": 0})


@pytest.fixture()
def client(app):
    return app.test_client()


def searcher_of(app):
    return app.extensions["visual_search"].get()


def jpeg(img: Image.Image, exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def post(client, data: bytes, query: str = "", **form: str):
    return client.post(f"/api/search{query}", data={"image": (io.BytesIO(data), "p.jpg"), **form},
                       content_type="multipart/form-data")


def two_products(demo_index: Path, app) -> tuple[Image.Image, str, str]:
    """Two catalog photos of different categories side by side, and the two products' ids (left, right)."""
    items = list(searcher_of(app).items)
    left = items[0]
    right = next(i for i in items if i["category"] != left["category"])
    photos = [Image.open(demo_index / "catalog" / i["image"]).convert("RGB").resize((160, 160)) for i in (left, right)]
    both = Image.new("RGB", (320, 160))
    both.paste(photos[0], (0, 0))
    both.paste(photos[1], (160, 0))
    return both, left["product_id"], right["product_id"]


def test_a_box_of_the_photo_finds_the_product_in_it(client, app, demo_index: Path) -> None:
    both, left, right = two_products(demo_index, app)
    data = jpeg(both)
    by_query = post(client, data, "?k=3&bbox=0,0,0.5,1").get_json()
    assert by_query["results"][0]["product_id"] == left
    assert by_query["crop"] == {"bbox": [0, 0, 0.5, 1], "pixels": [0, 0, 160, 160], "size": [160, 160]}
    by_form = post(client, data, "?k=3", bbox="0.5,0,1,1").get_json()
    assert by_form["results"][0]["product_id"] == right and by_form["crop"]["pixels"] == [160, 0, 320, 160]
    import base64

    by_json = client.post("/api/search", json={"image_base64": base64.b64encode(data).decode(), "k": 3,
                                               "bbox": [0.5, 0, 1, 1]}).get_json()
    assert [r["product_id"] for r in by_json["results"]] == [r["product_id"] for r in by_form["results"]]
    whole = post(client, data, "?k=3").get_json()
    assert whole["crop"] is None and whole["results"][0]["score"] < by_query["results"][0]["score"]


def test_the_box_is_taken_on_the_upright_photo(client, app, demo_index: Path) -> None:
    both, left, _right = two_products(demo_index, app)
    # Stored rotated a quarter turn, with EXIF orientation 6 ("rotate 90 clockwise to display"): upright, the
    # left product is still on the left.
    stored = both.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    body = post(client, jpeg(stored, exif), "?k=3&bbox=0,0,0.5,1").get_json()
    assert body["crop"]["size"] == [160, 160] and body["results"][0]["product_id"] == left


def test_every_low_cardinality_column_is_a_facet_with_counts(client, app) -> None:
    body = client.get("/api/filters").get_json()
    facets = body["facets"]
    assert {"category", "gender", "baseColour", "season", "usage"} <= set(facets)
    assert "productDisplayName" not in facets and "id" not in facets  # one value per product: not a facet
    assert "duplicate_of" not in facets and "duplicate_of" in body["columns"]  # acquire's flag: not for shoppers
    items = list(searcher_of(app).items)
    for column in ("gender", "baseColour"):
        counted = {f["value"]: f["count"] for f in facets[column]}
        assert counted == {v: sum(1 for i in items if i["metadata"].get(column) == v) for v in counted}
        value = facets[column][0]["value"]
        results = post(client, jpeg(Image.new("RGB", (120, 120), (200, 30, 30))), f"?k=50&{column}={value}"
                       ).get_json()["results"]
        assert len(results) == min(50, counted[value]) and {r["metadata"][column] for r in results} == {value}


def test_min_score_drops_weaker_results(client, demo_index: Path) -> None:
    data = next((demo_index / "catalog" / "images").rglob("*.jpg")).read_bytes()
    everything = post(client, data, "?k=30").get_json()["results"]
    cut = everything[10]["score"]
    kept = post(client, data, f"?k=30&min_score={cut}").get_json()
    assert kept["min_score"] == cut
    assert [r["product_id"] for r in kept["results"]] == [r["product_id"] for r in everything if r["score"] >= cut]
    assert post(client, data, "?k=30&min_score=1").get_json()["results"] == \
        [r for r in everything if r["score"] >= 1]
    product = everything[0]["product_id"]
    similar = client.get(f"/api/products/{product}/similar?k=20&min_score=0.5").get_json()["results"]
    assert all(r["score"] >= 0.5 for r in similar)


def duplicate_pair(app) -> tuple[dict, dict]:
    """The sample catalog's re-upload: two products with the very same photo."""
    items = list(searcher_of(app).items)
    by_thumb: dict[str, dict] = {}
    for item in items:
        if item["thumbnail"] in by_thumb:
            return by_thumb[item["thumbnail"]], item
        by_thumb[item["thumbnail"]] = item
    raise AssertionError("the sample catalog has no re-uploaded photo")


def test_collapse_returns_one_product_per_near_duplicate_group(own_index: Path, tmp_path: Path) -> None:
    # The demo's tiny encoder sees an 8x8 colour layout, so many of its products are near-identical at the default
    # threshold; at 0.9999 only the re-uploaded photo makes a group.
    manifest = index.run(own_index, trees=4, duplicate_threshold=0.9999)
    assert manifest["duplicate_groups"] == 1 and manifest["duplicate_threshold"] == 0.9999
    app = create_app({"ARTIFACTS": str(own_index / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "c"),
                      "RELOAD_CHECK_S": 0})
    client = app.test_client()
    first, second = duplicate_pair(app)
    searcher = searcher_of(app)
    assert searcher.groups[first["id"]] == searcher.groups[second["id"]]
    data = (own_index / "index" / "current" / first["thumbnail"]).read_bytes()
    plain = post(client, data, "?k=10").get_json()
    top_two = {r["product_id"] for r in plain["results"][:2]}
    assert top_two == {first["product_id"], second["product_id"]} and plain["collapse"] is False
    collapsed = post(client, data, "?k=10&collapse=true").get_json()
    ids = [r["product_id"] for r in collapsed["results"]]
    assert len(ids) == 10 and len(set(ids) & top_two) == 1 and collapsed["collapse"] is True
    groups = [int(searcher.groups[searcher.items.lookup(p)]) for p in ids]
    assert len(set(groups)) == len(groups)
    like = client.get(f"/api/products/{first['product_id']}/similar?k=5&collapse=true").get_json()["results"]
    assert second["product_id"] not in [r["product_id"] for r in like] and len(like) == 5
    like_all = client.get(f"/api/products/{first['product_id']}/similar?k=5").get_json()["results"]
    assert like_all[0]["product_id"] == second["product_id"]
    assert client.get("/api/filters").get_json()["collapse"] is True
    searcher.groups = None  # an index built before groups existed
    refused = post(client, data, "?collapse=1")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "no_duplicate_groups"


def test_groups_hold_products_within_the_threshold_of_their_first() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[:10] + 0.05 * rng.normal(size=(10, 16)).astype(np.float32)  # 10 near-copies of the first 10
    vectors = np.concatenate([base, near / np.linalg.norm(near, axis=1, keepdims=True)])
    first, similarity = find_groups(vectors, 0.95, block=7)  # blocks smaller than the catalog
    assert first[40:].tolist() == list(range(10)) and (first[10:40] == np.arange(10, 40)).all()
    assert np.allclose(similarity[40:], np.sum(vectors[40:] * vectors[:10], axis=1), atol=1e-5)
    members = np.flatnonzero(first != np.arange(len(first)))
    assert (np.sum(vectors[members] * vectors[first[members]], axis=1) >= 0.95).all()
    assert (find_groups(vectors, 1.0)[0] == np.arange(50)).all()
    with pytest.raises(ValueError, match="cosine similarity"):
        find_groups(vectors, 1.5)
    # A product's vector is the normalised mean of its images'.
    joined = product_vectors(vectors[:4], np.array([1, 3]))
    mean = vectors[1:4].mean(axis=0)
    assert np.allclose(joined, [vectors[0], mean / np.linalg.norm(mean)], atol=1e-6)


def test_duplicates_stage_writes_the_report_and_contact_sheet(own_index: Path) -> None:
    summary = duplicates.run(own_index)
    with open(own_index / "reports" / "near-duplicates.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert summary["groups"] >= 1 and len(rows) == summary["products_in_groups"]
    assert set(rows[0]) == {"group", "product_id", "name", "category", "similarity"}
    first_rows = [r for r in rows if float(r["similarity"]) == 1.0]
    assert len({r["group"] for r in rows}) == summary["groups"] <= len(first_rows)
    sheet = Image.open(own_index / "reports" / "near-duplicates.png")
    assert sheet.width >= 2 * 128 and sheet.height >= summary["groups"] * 128 // max(1, summary["groups"])
    strict = duplicates.run(own_index, threshold=1.0)
    assert strict["groups"] <= summary["groups"]
    loose = duplicates.run(own_index, threshold=0.5)
    assert loose["products_in_groups"] > summary["products_in_groups"]
    with pytest.raises(StageError, match="threshold"):
        duplicates.run(own_index, threshold=0)
    cli = subprocess.run([sys.executable, "-m", "pipeline", "duplicates", "--data-dir", str(own_index),
                          "--threshold", "0.99"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "near-duplicates.csv" in cli.stdout, cli.stderr[-2000:]
