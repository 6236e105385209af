"""Acquire: every source kind, every input row accepted or explained, images normalised into category folders."""

from __future__ import annotations

import csv
import http.server
import threading
from pathlib import Path

import pytest
from PIL import Image

from pipeline import acquire
from pipeline.catalog import ingest
from pipeline.catalog.sources import SourceError, parse_source
from pipeline.catalog.table import read_catalog
from runtime.layout import Layout


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sample_catalog_nothing_is_lost(sample_catalog: Path, tmp_path: Path) -> None:
    summary = acquire.run(f"fashion:{sample_catalog}", tmp_path, workers=1)
    layout = Layout(tmp_path)
    catalog, rejects = rows(layout.catalog_csv), rows(layout.rejects_csv)
    assert summary["input_rows"] == 80 == len(catalog) + len(rejects)
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert reasons["10005"].startswith("truncated or corrupt")
    assert reasons["10017"].startswith("empty file")
    assert reasons["10029"].startswith("not an image")
    assert {k for k, v in reasons.items() if v.startswith("image missing")} == {"10011", "10023", "10041", "10053"}
    dup = {r["product_id"]: r["duplicate_of"] for r in catalog}
    assert dup["10047"] == "10046" and dup["10046"] == ""
    first = catalog[0]
    assert first["category"] == first["articleType"]
    assert first["image"] == f"images/{first['category']}/{first['product_id']}.jpg"
    assert Image.open(layout.catalog / first["image"]).mode == "RGB"
    assert first["productDisplayName"] == first["name"] and first["baseColour"]


def test_parallel_workers_give_the_same_catalog(sample_catalog: Path, tmp_path: Path) -> None:
    acquire.run(f"fashion:{sample_catalog}", tmp_path / "one", workers=1)
    ingest.INLINE_BELOW, saved = 0, ingest.INLINE_BELOW
    try:
        acquire.run(f"fashion:{sample_catalog}", tmp_path / "two", workers=2)
    finally:
        ingest.INLINE_BELOW = saved
    assert (tmp_path / "one/catalog/catalog.csv").read_text().replace("/one/", "/") == \
        (tmp_path / "two/catalog/catalog.csv").read_text().replace("/two/", "/")


def test_fashion_rows_with_extra_commas_and_orphan_images(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    (root / "images").mkdir(parents=True)
    for pid in ("1", "2", "3"):
        Image.new("RGB", (64, 64), (int(pid) * 60, 0, 0)).save(root / "images" / f"{pid}.jpg")
    (root / "styles.csv").write_text(
        "id,gender,articleType,productDisplayName\n"
        "1,Men,Shirts,Turtle Check Men Navy Blue Shirt\n"
        "2,Women,Tops,Red, White and Blue Top\n"  # unquoted comma, as in Kaggle's own file
        "4,Men\n")
    acquire.run(f"fashion:{root}", tmp_path / "data")
    layout = Layout(tmp_path / "data")
    catalog = {r["product_id"]: r for r in rows(layout.catalog_csv)}
    assert catalog["2"]["name"] == "Red, White and Blue Top"
    reasons = {r["id"]: r["reason"] for r in rows(layout.rejects_csv)}
    assert reasons["3"] == "image has no row in styles.csv"
    assert reasons["4"].startswith("malformed row")


def test_folder_per_category_and_food11_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel, colour in [("Bread/a.jpg", "red"), ("Bread/b.png", "blue"), ("Soup/c.webp", "green"),
                        ("training/0_1.jpg", "white"), ("evaluation/0_1.jpg", "black"), ("notes.txt", None)]:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if colour is None:
            path.write_text("not a product")
        else:
            Image.new("RGB", (64, 64), colour).save(path)
    summary = acquire.run(f"folders:{src}", tmp_path / "data")
    catalog = {r["product_id"]: r for r in rows(Layout(tmp_path / "data").catalog_csv)}
    assert catalog["Bread_a"]["category"] == "Bread" and catalog["Soup_c"]["category"] == "Soup"
    assert catalog["training_0_1"]["category"] == "0" and catalog["evaluation_0_1"]["category"] == "0"
    assert summary["rejected"] == 1 and summary["accepted"] == 5
    assert (tmp_path / "data/catalog/images/Bread/Bread_b.jpg").is_file()


def test_a_phone_photo_is_stored_upright_at_1024_px_from_a_reduced_decode(tmp_path: Path) -> None:
    """A 12 MP JPEG stored sideways (EXIF 6) is decoded at 1/2 (1.5 x the stored side is kept) and stored upright
    at 1,024 px, close to what decoding every pixel gives; the catalog records the photo's own upright size."""
    import io

    import numpy as np

    from benchmarks.phone_photos import phone_photo
    from runtime import imaging

    src = tmp_path / "src" / "Shirts"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = phone_photo(Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)))
    (src / "phone.jpg").write_bytes(data)
    assert imaging.open_image(data, at_least=1536).size == (1512, 2016)  # upright, half of 3024x4032
    acquire.run(f"folders:{tmp_path / 'src'}", tmp_path / "data")
    row = next(iter(rows(Layout(tmp_path / "data").catalog_csv)))
    assert (int(row["width"]), int(row["height"])) == (3024, 4032)
    stored = Image.open(tmp_path / "data" / "catalog" / row["image"])
    assert stored.size == (768, 1024)
    full = Image.open(io.BytesIO(imaging.normalise(imaging.open_image(data))))
    assert np.abs(np.asarray(stored, float) - np.asarray(full, float)).mean() < 2


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_csv_manifest_with_local_paths_and_http_urls(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    Image.new("RGB", (64, 64), "orange").save(web / "remote.jpg")
    (web / "page.html").write_text("<html>not an image</html>")
    Image.new("RGB", (64, 64), "purple").save(tmp_path / "local.png")
    handler = lambda *a, **k: _Quiet(*a, directory=str(web), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (tmp_path / "manifest.csv").write_text(
            "id,image,name,category,brand\n"
            "a,local.png,Local Thing,Cat/One,Acme\n"
            f"b,{base}/remote.jpg,Remote Thing,Cat/One,Acme\n"
            f"c,{base}/page.html,Not An Image,Cat/One,Acme\n"
            f"d,{base}/missing.jpg,Gone,Cat/One,Acme\n"
            "a,local.png,Again,Cat/One,Acme\n")
        summary = acquire.run(f"csv:{tmp_path / 'manifest.csv'}", tmp_path / "data")
    finally:
        server.shutdown()
    layout = Layout(tmp_path / "data")
    catalog = {r["product_id"]: r for r in rows(layout.catalog_csv)}
    assert set(catalog) == {"a", "b"} and catalog["a"]["brand"] == "Acme"
    assert catalog["a"]["image"] == "images/Cat-One/a.jpg"
    reasons = {r["id"]: r["reason"] for r in rows(layout.rejects_csv)}
    assert reasons["c"].startswith("not an image")
    assert reasons["d"].startswith("image unreadable") and "404" in reasons["d"]
    assert reasons["a"].startswith("image listed twice for this product")  # the fifth row
    assert summary["input_rows"] == 5 and summary["rejected"] == 3


def test_csv_manifest_without_required_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,picture,title\n1,a.jpg,x\n")
    with pytest.raises(SourceError, match=r"lacks required column\(s\) \['name', 'category', 'image \(or images\)'\]"):
        acquire.run(f"csv:{tmp_path / 'm.csv'}", tmp_path / "data")


def test_unknown_or_missing_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown source"):
        parse_source("ftp:somewhere")
    with pytest.raises(SourceError, match=r"no styles.csv"):
        acquire.run(f"fashion:{tmp_path}", tmp_path / "data")
    with pytest.raises(SourceError, match="not found"):
        acquire.run(f"folders:{tmp_path / 'nope'}", tmp_path / "data")


def test_kaggle_without_credentials_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(SourceError, match="no credentials; set KAGGLE_USERNAME and KAGGLE_KEY"):
        acquire.run("kaggle:paramaggarwal/fashion-product-images-small", tmp_path / "data")


def test_holdout_is_stratified_and_disjoint(sample_catalog: Path, tmp_path: Path) -> None:
    summary = acquire.run(f"fashion:{sample_catalog}", tmp_path, holdout=0.25)
    layout = Layout(tmp_path)
    catalog, queries = read_catalog(layout.catalog_csv), read_catalog(layout.queries_csv)
    assert summary["held_out"] == len(queries) > 0
    assert not set(catalog["product_id"]) & set(queries["product_id"])
    assert set(queries["category"]) <= set(catalog["category"])
    assert {"id", "image", "name", "category"} <= set(queries.columns)


def test_s3_prefix_in_fashion_layout_and_csv_with_s3_uris(s3_server, sample_catalog: Path, tmp_path: Path) -> None:
    from runtime.storage import s3_client

    client = s3_client()
    client.create_bucket(Bucket="shop")
    client.upload_file(str(sample_catalog / "styles.csv"), "shop", "spring/styles.csv")
    for image in sorted((sample_catalog / "images").iterdir())[:12]:
        client.upload_file(str(image), "shop", f"spring/images/{image.name}")
    summary = acquire.run("fashion:s3://shop/spring", tmp_path / "data")
    assert summary["input_rows"] == 80 and summary["accepted"] == 11  # 12 files, 10005 truncated
    assert summary["reject_reasons"]["image missing"] == 68
    assert acquire.run("s3://shop/spring", tmp_path / "auto")["accepted"] == 11  # layout detected

    client.put_object(Bucket="shop", Key="m/manifest.csv", Body=(
        b"id,image,name,category\n"
        b"x,s3://shop/spring/images/10000.jpg,From S3,Bags\n"
        b"y,s3://shop/spring/images/none.jpg,Missing,Bags\n"))
    summary = acquire.run("csv:s3://shop/m/manifest.csv", tmp_path / "csv")
    assert summary["accepted"] == 1
    reasons = rows(Layout(tmp_path / "csv").rejects_csv)
    assert reasons[0]["id"] == "y" and reasons[0]["reason"].startswith("image unreadable")
