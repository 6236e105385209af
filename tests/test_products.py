"""Products with several photos, end to end: manifest -> catalog -> index -> search API -> the shopper's page."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline import acquire, evaluate, finetune, index, vectorize
from pipeline.catalog.ingest import merge_products
from pipeline.catalog.records import Record
from runtime import artifacts
from runtime import products as products_module
from runtime.items import flatten
from runtime.layout import Layout
from runtime.products import ProductSearch, aggregate, image_table
from service import create_app
from tests.helpers import free_port, start_gunicorn, stop

VIEWS = 3  # photos per product in the generated catalog: the packshot, a mirror image, a close-up


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_product_scores_from_image_scores() -> None:
    image_product = np.array([0, 0, 1, 2, 2, 2])
    ids = np.arange(6)
    scores = np.array([0.9, 0.1, 0.6, 0.7, 0.7, 0.1], np.float32)
    products, values, best = aggregate(ids, scores, image_product, "max")
    assert products.tolist() == [0, 2, 1] and np.allclose(values, [0.9, 0.7, 0.6]) and best.tolist() == [0, 3, 2]
    products, values, _ = aggregate(ids, scores, image_product, "mean")
    assert products.tolist() == [1, 0, 2] and np.allclose(values, [0.6, 0.5, 0.5])
    products, values, _ = aggregate(ids, scores, image_product, "mix")
    assert products.tolist() == [0, 1, 2] and np.allclose(values, [0.7, 0.6, 0.6])
    with pytest.raises(ValueError, match="scoring must be one of"):
        aggregate(ids, scores, image_product, "median")


@pytest.mark.parametrize(("counts", "flat"), [([1, 1], [0, 0]), ([2], [0, 5]), ([1], [0, 1])])
def test_an_image_listed_twice_or_never_is_refused(counts: list[int], flat: list[int]) -> None:
    with pytest.raises(artifacts.ArtifactError):
        image_table(np.array(counts, np.int32), np.array(flat, np.int32), 2)


def test_annoy_and_exact_agree_and_k_counts_products(monkeypatch) -> None:
    from annoy import AnnoyIndex

    rng = np.random.default_rng(0)
    lists = [list(range(i * 5, i * 5 + 5)) for i in range(40)] + [[200 + i] for i in range(60)]  # 5 photos or 1
    vectors = unit(rng, 260)
    annoy = AnnoyIndex(8, "angular")
    for i, v in enumerate(vectors):
        annoy.add_item(i, v)
    annoy.set_seed(0)
    annoy.build(10)
    search = ProductSearch(vectors, *flatten(lists), annoy, search_k=2000, n_trees=10)
    labels = np.array(["many"] * 40 + ["one"] * 60)
    for q in unit(rng, 20):
        fast, exact = search.search(q, 10), search.search(q, 10, exact=True)
        assert len({h.product for h in fast}) == 10 == len(fast)
        assert len({h.product for h in fast} & {h.product for h in exact}) >= 9
        for h in exact:  # scored mix: (best image + mean of its images) / 2; the best image is reported
            sims = vectors[lists[h.product]] @ q
            assert h.image == lists[h.product][int(np.argmax(sims))]
            assert np.isclose(h.score, (sims.max() + sims.mean()) / 2, atol=1e-5)
        monkeypatch.setattr(products_module, "EXACT_FILTER_BELOW", 0)  # the over-fetching Annoy path
        for label, count in (("many", 40), ("one", 60)):
            for k in (1, 7, count, count + 5):
                found = search.search(q, k, mask=labels == label, exclude=0)
                assert len(found) == min(k, count - (label == "many"))
                assert all(labels[h.product] == label and h.product != 0 for h in found)
        monkeypatch.undo()


def test_manifest_with_several_images_per_product(tmp_path: Path) -> None:
    for name, colour in (("front.png", "red"), ("back.png", "blue"), ("side.png", "green"), ("worn.png", "black"),
                         ("hat.png", "white")):
        Image.new("RGB", (64, 64), colour).save(tmp_path / name)
    (tmp_path / "manifest.csv").write_text(
        "id,image,images,name,category,brand\n"
        "p1,front.png,back.png|side.png,Runner,Shoes,Acme\n"
        "p2,hat.png,,Hat,Hats,Acme\n"
        "p1,worn.png,,Runner (worn),Shoes,Zeta\n"
        "p1,back.png,,Runner,Shoes,Acme\n")
    summary = acquire.run(f"csv:{tmp_path / 'manifest.csv'}", tmp_path / "data")
    layout = Layout(tmp_path / "data")
    catalog = rows(layout.catalog_csv)
    assert [r["product_id"] for r in catalog] == ["p1", "p1", "p1", "p2", "p1"]
    assert [r["image"] for r in catalog if r["product_id"] == "p1"] == [
        "images/Shoes/p1.jpg", "images/Shoes/p1~2.jpg", "images/Shoes/p1~3.jpg", "images/Shoes/p1~4.jpg"]
    assert {(r["name"], r["brand"]) for r in catalog if r["product_id"] == "p1"} == {("Runner", "Acme")}
    conflicts = {(c["product_id"], c["column"]): (c["kept"], c["ignored"]) for c in rows(layout.conflicts_csv)}
    assert conflicts == {("p1", "name"): ("Runner", "Runner (worn)"), ("p1", "brand"): ("Acme", "Zeta")}
    assert rows(layout.rejects_csv)[0]["reason"].startswith("image listed twice for this product")
    assert summary["accepted"] == 5 and summary["products"] == 2 and summary["metadata_conflicts"] == 2
    assert summary["input_rows"] == 6


def test_merge_keeps_the_first_rows_metadata() -> None:
    records = [Record("a", "A", "x", "1.jpg", {"colour": "red", "image": "1.jpg"}, "m:2"),
               Record("a", "A2", "x", "2.jpg", {"colour": "red", "image": "2.jpg"}, "m:3")]
    merged, rejects, conflicts = merge_products(records)
    assert [r.name for r in merged] == ["A", "A"] and [r.metadata["image"] for r in merged] == ["1.jpg", "2.jpg"]
    assert not rejects and [(c.column, c.ignored, c.source) for c in conflicts] == [("name", "A2", "m:3")]


@pytest.fixture(scope="module")
def multi(sample_catalog: Path, tiny_hub_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir built from a manifest in which every sample product has VIEWS photos, a fifth held out."""
    src = tmp_path_factory.mktemp("multi-src")
    with open(sample_catalog / "styles.csv", newline="", encoding="utf-8") as fh:
        styles = [r for r in csv.DictReader(fh) if (sample_catalog / "images" / f"{r['id']}.jpg").is_file()]
    with open(src / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "images", "name", "category", "gender", "baseColour"])
        for row in styles:
            try:
                image = Image.open(sample_catalog / "images" / f"{row['id']}.jpg").convert("RGB")
            except OSError:
                continue  # the sample's deliberately broken files
            views = [image, ImageOps.mirror(image), image.crop((24, 24, image.width - 24, image.height - 24))]
            for n, view in enumerate(views):
                view.save(src / f"{row['id']}-{n}.jpg")
            writer.writerow([row["id"], "|".join(f"{row['id']}-{n}.jpg" for n in range(VIEWS)),
                             row["productDisplayName"], row["articleType"], row["gender"], row["baseColour"]])
    data = tmp_path_factory.mktemp("multi")
    acquire.run(f"csv:{src / 'manifest.csv'}", data, holdout=0.2)
    finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=30)
    vectorize.run(data, shard_rows=64)
    index.run(data, trees=8)
    return data


def test_held_out_products_keep_all_their_photos_on_one_side(multi: Path) -> None:
    layout = Layout(multi)
    kept, held = rows(layout.catalog_csv), rows(layout.queries_csv)
    assert held and not {r["product_id"] for r in kept} & {r["product_id"] for r in held}
    for table in (kept, held):
        per_product = {}
        for r in table:
            per_product[r["product_id"]] = per_product.get(r["product_id"], 0) + 1
        assert set(per_product.values()) == {VIEWS}


@pytest.fixture()
def multi_client(multi: Path, tmp_path: Path):
    app = create_app({"ARTIFACTS": str(multi / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                      "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    return app, app.test_client()


def test_search_returns_each_product_once_with_its_matched_photo(multi: Path, multi_client) -> None:
    app, client = multi_client
    searcher = app.extensions["visual_search"].get()
    manifest = searcher.manifest
    assert manifest["count"] == VIEWS * manifest["products"] == VIEWS * len(searcher.items)
    catalog = rows(Layout(multi).catalog_csv)
    for row in catalog[1:12:5]:  # a packshot, a mirror image, a close-up
        data = (Layout(multi).catalog / row["image"]).read_bytes()
        for k in (1, 5, 40):
            body = client.post(f"/api/search?k={k}", data={"image": (io.BytesIO(data), "q.jpg")}).get_json()
            ids = [r["product_id"] for r in body["results"]]
            assert len(ids) == k == len(set(ids))
        top = body["results"][0]
        view = row["image"].rsplit("~", 1)[1][0] if "~" in row["image"] else "1"
        assert top["product_id"] == row["product_id"] and top["matched_image"] == int(view) - 1
        assert len(top["images"]) == VIEWS and top["image_url"] == top["images"][top["matched_image"]]
        for url in top["images"]:
            assert client.get(url).mimetype == "image/jpeg"
    assert client.get(f"/images/{catalog[0]['product_id']}?n={VIEWS}").status_code == 404
    facets = client.get("/api/filters").get_json()
    assert facets["count"] == len(searcher.items) == len({r["product_id"] for r in catalog})
    assert sum(f["count"] for f in facets["facets"]["category"]) == facets["count"]  # products, not photos
    for value in facets["facets"]["category"][:3]:
        for k in (1, value["count"], value["count"] + 2):
            body = client.post(f"/api/search?k={k}&category={value['value']}",
                               data={"image": (io.BytesIO(data), "q.jpg")}).get_json()
            assert [r["category"] for r in body["results"]] == [value["value"]] * min(k, value["count"])
            assert len({r["product_id"] for r in body["results"]}) == len(body["results"])
    similar = client.get(f"/api/products/{row['product_id']}/similar?k=30").get_json()["results"]
    ids = [r["product_id"] for r in similar]
    assert len(ids) == 30 == len(set(ids)) and row["product_id"] not in ids


def test_evaluate_counts_products(multi: Path) -> None:
    layout = Layout(multi)
    report = evaluate.run(multi, f"csv:{layout.queries_csv}", label_column="category", k=5)
    assert report["n_queries"] == len(rows(layout.queries_csv))
    assert report["precision_at_1"] > 0.3 and report["ann_recall_at_10"] >= 0.9


def test_shopper_flips_through_a_products_photos(multi: Path, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{chromium} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{chromium} is absent: install Debian's chromium to run this test")
    from playwright.sync_api import sync_playwright

    from tests.test_service_live import CHROMIUM_FLAGS

    port, log = free_port(), tmp_path / "gunicorn.log"
    process, _ = start_gunicorn(multi / "index" / "current", port, 1, tmp_path / "cache", deadline_s=120, log=log)
    photo = Layout(multi).catalog / rows(Layout(multi).catalog_csv)[1]["image"]  # a product's second photo
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 420, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#results .card .flip", timeout=30_000)
            first = page.locator("#results .card").first
            assert first.locator(".count").inner_text() == f"photo 2/{VIEWS} · matched"
            shown = first.locator("img").get_attribute("src")
            first.get_by_label("Next photo", exact=False).click()
            assert first.locator(".count").inner_text() == f"photo 3/{VIEWS}"
            assert first.locator("img").get_attribute("src") != shown
            page.wait_for_function("document.querySelector('#results .card img').naturalWidth > 0", timeout=10_000)
            first.get_by_label("Previous photo", exact=False).click()
            assert first.locator("img").get_attribute("src") == shown
            browser.close()
    finally:
        stop(process)
