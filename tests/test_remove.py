"""`pipeline remove`: a delta version without the given products, served over its base, deployed as its own files."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import index, remove
from pipeline.common.errors import StageError
from runtime import artifacts, versions
from runtime import products as products_module
from runtime.items import find_products, read_items
from runtime.layout import ITEMS_FILE, MANIFEST, REMOVED_FILE, Layout
from runtime.products import ProductSearch
from service import create_app
from service.searcher import Searcher
from tests.helpers import ROOT


def served_ids(folder: Path) -> list[str]:
    return [item["product_id"] for item in read_items(folder / ITEMS_FILE)]


def test_remove_writes_a_delta_over_the_full_version_and_reports_unknown_ids(own_index: Path) -> None:
    layout = Layout(own_index)
    base = layout.current_index.resolve()
    ids = served_ids(base)
    summary = remove.run(own_index, [ids[3], "no-such-product", ids[5], ids[3]])
    assert summary["removed_now"] == [ids[3], ids[5]] and summary["unknown"] == ["no-such-product"]
    delta = layout.current_index.resolve()
    assert delta != base and delta.name == summary["version"]
    manifest = artifacts.verify(delta)
    assert manifest["delta"] == {"base": base.name, "base_manifest_sha256": artifacts.manifest_sha256(base),
                                 "removed": 2, "added": 0}
    assert set(manifest["files"]) == {REMOVED_FILE} and manifest["products"] == len(ids) - 2
    assert sorted(p.name for p in delta.iterdir()) == [MANIFEST, REMOVED_FILE]  # nothing of the base is copied
    assert json.loads((delta / REMOVED_FILE).read_text()) == sorted([ids[3], ids[5]])

    again = remove.run(own_index, [ids[5], ids[8]])  # a new delta over the same base, holding every removal
    assert again["removed_now"] == [ids[8]] and again["unknown"] == [ids[5]]
    assert again["delta"]["base"] == base.name and again["delta"]["removed"] == 3
    with pytest.raises(StageError, match="none of the 2 product id"):
        remove.run(own_index, [ids[3], "nope"])
    with pytest.raises(StageError, match="no product ids"):
        remove.run(own_index, [])


def test_a_delta_whose_base_was_altered_or_is_missing_is_refused(own_index: Path, tmp_path: Path) -> None:
    layout = Layout(own_index)
    base = layout.current_index.resolve()
    remove.run(own_index, [served_ids(base)[0]])
    delta = layout.current_index.resolve()
    manifest = json.loads((base / MANIFEST).read_text())
    manifest["search_k"] += 1
    (base / MANIFEST).write_text(json.dumps(manifest))  # another build under the same name
    with pytest.raises(artifacts.ArtifactError, match="not the version"):
        Searcher(delta)
    alone = tmp_path / "alone" / delta.name
    shutil.copytree(delta, alone)
    with pytest.raises(artifacts.ArtifactError, match="not beside it"):
        Searcher(alone)


@pytest.mark.parametrize("annoy", [False, True], ids=["exact-scan", "annoy"])
def test_a_removed_product_never_comes_back(own_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            annoy: bool) -> None:
    layout = Layout(own_index)
    items = read_items(layout.current_index.resolve() / ITEMS_FILE)
    gone = [items[i] for i in (0, 1, 2, 10, 11)]
    remove.run(own_index, [item["product_id"] for item in gone])
    gone_ids = {item["product_id"] for item in gone}
    app = create_app({"ARTIFACTS": str(layout.current_index), "LOAD_IN_BACKGROUND": False,
                      "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    searcher = app.extensions["visual_search"].get()
    if annoy:
        monkeypatch.setattr(products_module, "EXACT_FILTER_BELOW", 0)
        monkeypatch.setattr(searcher.products, "exact", False)
    client = app.test_client()
    served = len(items) - len(gone)
    assert client.get("/health").get_json()["items"] == served
    for item in gone:
        photo = (layout.catalog / item["image"]).read_bytes()
        for query in ("?k=5", f"?k=5&category={item['category']}", "?k=5&collapse=true", f"?k={len(items)}"):
            body = client.post(f"/api/search{query}", data={"image": (io.BytesIO(photo), "q.jpg")}).get_json()
            results = [r["product_id"] for r in body["results"]]
            assert not gone_ids & set(results), (query, results)
            if query == "?k=5":
                assert len(results) == 5
        assert client.get(f"/api/products/{item['product_id']}").status_code == 404
        assert client.get(f"/api/products/{item['product_id']}/similar").status_code == 404
        assert client.get(f"/images/{item['product_id']}").status_code == 404
    assert len(client.post(f"/api/search?k={len(items)}",
                           data={"image": (io.BytesIO(photo), "q.jpg")}).get_json()["results"]) == served
    kept = items[20]["product_id"]
    similar = client.get(f"/api/products/{kept}/similar?k={len(items)}").get_json()["results"]
    assert len(similar) == served - 1 and not gone_ids & {r["product_id"] for r in similar}
    assert client.get(f"/images/{kept}").status_code == 200  # the base's thumbnail
    category = gone[0]["category"]
    in_category = [i for i in items if i["category"] == category and i["product_id"] not in gone_ids]
    filters = client.get("/api/filters").get_json()
    assert filters["count"] == served
    assert {f["value"]: f["count"] for f in filters["facets"]["category"]}[category] == len(in_category)
    body = client.get(f"/api/products/{kept}/similar?k=50&category={category}").get_json()
    assert {r["product_id"] for r in body["results"]} == {i["product_id"] for i in in_category} - {kept}


def test_a_worker_serving_the_base_loads_only_the_delta(own_index: Path) -> None:
    layout = Layout(own_index)
    base = Searcher(layout.current_index)
    remove.run(own_index, [base.items[4]["product_id"]])
    delta = Searcher(layout.current_index, reuse=base)
    assert delta.base is base.base and delta.extractor is base.extractor  # the base's maps and model, shared
    assert delta.count == base.count - 1 and delta.version != base.version
    fresh = Searcher(layout.current_index)
    assert fresh.base is not base.base and fresh.count == delta.count
    vector = base.products.product_vector(4)
    assert [m.item["product_id"] for m in delta.search(vector, 5)] == \
        [m.item["product_id"] for m in fresh.search(vector, 5)]
    assert base.items[4]["product_id"] not in [m.item["product_id"] for m in delta.search(vector, 5)]


def test_pruning_keeps_the_base_of_a_kept_delta(own_index: Path) -> None:
    layout = Layout(own_index)
    base = layout.current_index.resolve().name
    ids = served_ids(layout.current_index.resolve())
    for product_id in ids[:4]:
        remove.run(own_index, [product_id], keep=2)
    kept = sorted(p.name for p in layout.index.iterdir() if p.is_dir() and not p.is_symlink())
    assert base in kept and len(kept) == 3  # two deltas, and their base however old it is
    assert artifacts.verify(layout.current_index)["delta"]["removed"] == 4
    full = index.run(own_index, trees=5, keep=1)  # a full build folds the removals in (from the catalog)
    assert "delta" not in full and full["products"] == len(ids)
    assert [p.name for p in layout.index.iterdir() if p.is_dir() and not p.is_symlink()] == [full["version"]]
    assert versions.prune(layout.index, keep=1, protect={full["version"]}) == []


def test_find_products_reads_ids_fast_and_falls_back_on_other_layouts(tmp_path: Path) -> None:
    lines = [{"id": i, "product_id": pid, "name": "n"} for i, pid in enumerate(["a", 'q"uote', "ünï", "7"])]
    (tmp_path / ITEMS_FILE).write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    wanted = {"a", 'q"uote', "ünï", "7", "missing"}
    assert find_products(tmp_path, wanted) == {"a": 0, 'q"uote': 1, "ünï": 2, "7": 3}
    other = [{"product_id": line["product_id"], "id": line["id"]} for line in lines]  # keys in another order
    (tmp_path / ITEMS_FILE).write_text("\n".join(json.dumps(line) for line in other) + "\n\n")
    assert find_products(tmp_path, wanted) == {"a": 0, 'q"uote': 1, "ünï": 2, "7": 3}


@pytest.mark.parametrize("images_each", [1, 3])
def test_product_search_leaves_removed_products_out_of_every_path(images_each: int) -> None:
    from annoy import AnnoyIndex

    rng = np.random.default_rng(3)
    n_products = 300
    vectors = rng.normal(size=(n_products * images_each, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    annoy = AnnoyIndex(16, "angular")
    for i, v in enumerate(vectors):
        annoy.add_item(i, v)
    annoy.build(8)
    counts = np.full(n_products, images_each)
    flat = np.arange(n_products * images_each)
    removed = rng.choice(n_products, 60, replace=False)
    search = ProductSearch(vectors, counts, flat, annoy, search_k=2000, n_trees=8, removed=removed)
    mask = rng.random(n_products) < 0.5
    for q in range(20):
        vector = vectors[q * images_each]
        for exact in (True, False):
            for kwargs in ({}, {"mask": mask}, {"exclude": int(removed[0])}, {"exclude": q}):
                hits = search.search(vector, 10, exact=exact, **kwargs)
                products = [h.product for h in hits]
                assert len(products) == 10 and not set(products) & set(removed.tolist()), (exact, kwargs)
                if "mask" in kwargs:
                    assert mask[products].all()
        everything = search.search(vector, n_products, exact=False)
        assert len(everything) == n_products - 60


def test_the_command_line_reads_ids_from_a_file(own_index: Path, tmp_path: Path) -> None:
    ids = served_ids(Layout(own_index).current_index.resolve())
    listing = tmp_path / "sold-out.txt"
    listing.write_text(f"# sold out today\n{ids[1]}\n\n{ids[2]}\nnot-a-product\n")
    done = subprocess.run([sys.executable, "-m", "pipeline", "remove", "--data-dir", str(own_index), ids[0],
                           "--from-file", str(listing)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "remove: 3 product(s) removed" in done.stdout and "not-a-product" in done.stdout
    done = subprocess.run([sys.executable, "-m", "pipeline", "remove", "--data-dir", str(own_index), ids[0]],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "error: none of the 1 product id(s) is served" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_published_delta_uploads_its_own_files_and_an_instance_follows_it(s3_server: str, own_index: Path,
                                                                           tmp_path: Path) -> None:
    import boto3

    from scripts import deploy
    layout = Layout(own_index)
    boto3.client("s3").create_bucket(Bucket="shop-search")
    full = deploy.upload_artifacts(layout.current_index, "shop-search", "prod")
    app = create_app({"ARTIFACTS": full["artifacts"], "LOAD_IN_BACKGROUND": False, "RELOAD_CHECK_S": 0,
                      "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    holder = app.extensions["visual_search"]
    before = holder.get()
    gone = before.items[6]["product_id"]
    remove.run(own_index, [gone])
    published = deploy.upload_artifacts(layout.current_index, "shop-search", "prod")
    delta_files = artifacts.verify(layout.current_index)["files"]
    assert published["uploaded"] == len(delta_files) + 1  # removed.json and the manifest: nothing of the base
    assert published["base"]["uploaded"] == 0 and published["base"]["version"] == full["version"]
    assert published["bytes"] < 2000 < full["bytes"]
    holder.check()  # what the watcher does every RELOAD_CHECK_S
    after = holder.get()
    assert after.version == published["version"] and after.base is before.base  # only the delta was loaded
    client = app.test_client()
    assert client.get(f"/api/products/{gone}").status_code == 404
    assert client.get("/health").get_json()["items"] == before.count - 1

    fresh = tmp_path / "fresh-instance"  # an instance that starts after the delta: base and delta both fetched
    other = create_app({"ARTIFACTS": full["artifacts"], "LOAD_IN_BACKGROUND": False, "RELOAD_CHECK_S": 0,
                        "ARTIFACTS_CACHE": str(fresh)})
    assert other.test_client().get(f"/api/products/{gone}").status_code == 404
    assert {p.name for p in (fresh / "shop-search" / "prod").iterdir() if not p.name.startswith(".")} == {
        full["version"], published["version"]}


def drop_rows(manifest: Path, product_ids: set[str]) -> None:
    """Take products out of a CSV manifest, as tonight's catalog export would."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(row for row in rows if row[0] not in product_ids)


def test_removed_and_added_products_under_load_on_two_workers(tiny_hub_model: Path, tmp_path: Path) -> None:
    """gunicorn with 2 workers, 3 clients searching with the photos of products about to go: `pipeline remove`,
    then a nightly `pipeline run` that writes a delta. No request fails; within RELOAD_CHECK_S + 5 s of each change
    no answer holds a removed product, and an added one is found."""
    import threading
    import time
    import urllib.request

    from benchmarks.catalog_refresh import apply_delta, make_catalog
    from pipeline import run as pipeline
    from tests.helpers import free_port, multipart, start_gunicorn, stop

    check_s = 1.0
    source, data = tmp_path / "source", tmp_path / "data"
    manifest = make_catalog(source, 400)
    options = {"encoder": f"hub:{tiny_hub_model}", "dim": 16}
    pipeline.run(f"csv:{manifest}", data, **options)
    with open(manifest, newline="", encoding="utf-8") as fh:
        photo = {row["id"]: source / row["image"] for row in csv.DictReader(fh)}
    targets = ["P0000005", "P0000006", "P0000007"]
    bodies = [multipart("image", "q.jpg", photo[p].read_bytes()) for p in targets]
    port, log = free_port(), tmp_path / "gunicorn.log"
    try:
        process, _ = start_gunicorn(data / "index" / "current", port, 2, tmp_path / "cache", deadline_s=120,
                                    env={"RELOAD_CHECK_S": str(check_s)}, log=log)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    answers: list[tuple[float, int, list[str]]] = []
    stopping = threading.Event()

    def search(body: bytes, content_type: str, k: int = 10) -> tuple[int, list[str]]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/search?k={k}", data=body,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, [r["product_id"] for r in json.loads(response.read())["results"]]

    def client(i: int) -> None:
        while not stopping.is_set():
            try:
                status, ids = search(*bodies[i % len(bodies)])
            except Exception as exc:  # noqa: BLE001 - a failed request is what this test counts
                status, ids = getattr(exc, "code", 599), []
            answers.append((time.monotonic(), status, ids))
            i += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1)
        assert set(targets) <= {p for _, _, ids in answers for p in ids}  # each found before
        remove.run(data, [targets[0]])  # 14:05, sold out
        removed_at = time.monotonic()
        time.sleep(check_s + 6)
        night = apply_delta(source, manifest, added=0.005, removed=0.0025, renamed=0.0, seed=3)
        drop_rows(manifest, {targets[0], targets[1]})  # tonight's catalog: without the sold-out one, and another
        nightly = pipeline.run(f"csv:{manifest}", data, **options)
        published_at = time.monotonic()
        assert nightly["index"]["changes"]["removed"] == 3 and nightly["index"]["changes"]["added"] == 2
        time.sleep(check_s + 6)
        added = night["added"][0]
        added_photo = source / "images" / f"{int(added[1:]) // 1000:04d}" / f"{int(added[1:])}.jpg"
        for _ in range(6):  # whichever worker answers
            assert search(*multipart("image", "q.jpg", added_photo.read_bytes()), k=3)[1][0] == added
    finally:
        stopping.set()
        for thread in threads:
            thread.join(timeout=60)
        stop(process)
    statuses = {status for _, status, _ in answers}
    assert statuses == {200} and len(answers) > 30, statuses
    late = [ids for at, _, ids in answers if removed_at + check_s + 5 < at < published_at]
    assert late and not any(targets[0] in ids for ids in late)
    later = [ids for at, _, ids in answers if at > published_at + check_s + 5]
    assert later and not any({targets[0], targets[1]} & set(ids) for ids in later)


def test_evaluate_measures_the_delta_that_is_served(built: Path, tmp_path: Path) -> None:
    """evaluate over a delta ranks what the service ranks: the base less the removed products, plus the added."""
    import pandas as pd

    from pipeline import evaluate

    data = tmp_path / "data"
    shutil.copytree(built, data, symlinks=True)
    layout = Layout(data)
    full = evaluate.run(data, f"csv:{layout.queries_csv}", label_column="category", report=tmp_path / "full.json")
    catalog = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
    catalog.loc[0, "name"] = "Renamed"  # served from the delta's added products from now on
    catalog.to_csv(layout.catalog_csv, index=False)
    delta = index.run(data, trees=8, delta_limit=1)
    assert delta["delta"]["added"] >= 1
    same = evaluate.run(data, f"csv:{layout.queries_csv}", label_column="category", report=tmp_path / "same.json")
    assert same["precision_at_5"] == pytest.approx(full["precision_at_5"], abs=0.02)  # the same products served
    assert json.loads((tmp_path / "same.details.json").read_text())["version"] == delta["version"]
    gone = served_ids(layout.current_index.resolve() / ".." / delta["delta"]["base"])[:20]
    fewer = remove.run(data, gone)
    less = evaluate.run(data, f"csv:{layout.queries_csv}", label_column="category", report=tmp_path / "less.json")
    assert fewer["products"] == delta["products"] - 20 and less["n_queries"] == full["n_queries"]
