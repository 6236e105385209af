"""Reruns cost what changed and leave nothing behind: the same inputs make no new index version, stale shards are
refused, failed runs clean up, one run per folder at a time, and an S3 mirror follows ETags and deletions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import acquire, index
from pipeline.common import locks
from pipeline.common.errors import StageError
from runtime import storage
from runtime.layout import Layout


@pytest.fixture()
def data(built: Path, tmp_path: Path) -> Path:
    """A copy of the built data dir (catalog, model, embeddings, index) for one test."""
    out = tmp_path / "data"
    for folder in ("catalog", "model", "embeddings", "index", "cache"):
        shutil.copytree(built / folder, out / folder, symlinks=True)
    return out


def versions(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "index").iterdir() if p.is_dir() and not p.is_symlink()
                  and not p.name.startswith("."))


def test_the_same_inputs_make_no_new_version(data: Path) -> None:
    first = index.run(data, trees=4)
    again = index.run(data, trees=4)
    assert again["unchanged"] is True and again["version"] == first["version"] and "unchanged" not in first
    assert (data / "index" / "current").resolve().name == first["version"]
    cli = subprocess.run([sys.executable, "-m", "pipeline", "index", "--data-dir", str(data), "--trees", "4"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "nothing changed since version " + first["version"] in cli.stdout, cli.stderr
    before = versions(data)
    # a renamed product changes no image and no vector, but shoppers must see the new name: a new version
    catalog = pd.read_csv(Layout(data).catalog_csv, dtype=str, keep_default_na=False)
    catalog.loc[0, "name"] = "Renamed product"
    catalog.to_csv(Layout(data).catalog_csv, index=False)
    renamed = index.run(data, trees=4)  # one product changed: a delta version over the first
    assert "unchanged" not in renamed and renamed["version"] not in before
    assert renamed["delta"]["base"] == first["version"] and renamed["changes"]["changed"] == 1
    assert "Renamed product" in (data / "index" / "current" / "added.jsonl").read_text()
    full = index.run(data, trees=4, full=True)
    assert "delta" not in full and "Renamed product" in (data / "index" / "current" / "items.jsonl").read_text()
    assert "unchanged" not in index.run(data, trees=4, scoring="max")  # another option: another version


def test_shards_made_from_other_images_are_refused(data: Path) -> None:
    layout = Layout(data)
    catalog = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
    # acquire run again on a catalog of as many rows, one of them now another photo: the old vectors must not serve
    catalog.loc[3, ["image", "sha256"]] = catalog.loc[7, ["image", "sha256"]].tolist()
    catalog.to_csv(layout.catalog_csv, index=False)
    with pytest.raises(StageError, match=r"part-00000.npy was not made from catalog rows 0\.\.15 .*re-run vectorize"):
        index.run(data, trees=4)
    summary = storage.read_json(layout.embeddings_summary)
    storage.write_json(layout.embeddings_summary, {**summary, "export_id": "another"})
    with pytest.raises(StageError, match="another extractor"):
        index.run(data, trees=4)


def test_a_failed_build_leaves_no_staging_folder_and_the_next_run_removes_old_ones(
        data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = (data / "index" / "current").resolve().name
    leftover = data / "index" / ".tmp-20200101T000000-000000"
    (leftover / "thumbs").mkdir(parents=True)
    (leftover / "index.ann").write_bytes(b"x" * 1000)  # what a killed run leaves

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index, "build_thumbnails", disk_full)
    with pytest.raises(OSError, match="No space"):
        index.run(data, trees=4)
    assert list((data / "index").glob(".tmp-*")) == []  # the old leftover and this run's staging folder
    assert (data / "index" / "current").resolve().name == current  # still served


def test_a_catalog_replaced_during_the_build_is_refused(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the stage reads the catalog's columns at three points (keys, products, then the table after Annoy)
    current = (data / "index" / "current").resolve().name
    layout = Layout(data)
    find = index.duplicate_search.find

    def acquire_meanwhile(*args, **kwargs):
        fresh = layout.catalog_csv.with_name("fresh.csv")
        fresh.write_text(layout.catalog_csv.read_text().replace(",", ", ", 1))
        fresh.replace(layout.catalog_csv)  # as acquire swaps its catalog in
        return find(*args, **kwargs)

    monkeypatch.setattr(index.duplicate_search, "find", acquire_meanwhile)
    with pytest.raises(StageError, match="changed while the index was built"):
        index.run(data, trees=4)
    assert list((data / "index").glob(".tmp-*")) == []
    assert (data / "index" / "current").resolve().name == current


def test_one_run_per_folder_at_a_time(data: Path, tmp_path: Path) -> None:
    with locks.locked(data / "index", "index"), pytest.raises(StageError, match="another index run is working in"):
        index.run(data, trees=4)
    assert "unchanged" not in index.run(data, trees=4)  # released: the next run goes ahead


def test_acquire_removes_what_a_killed_run_left(sample_catalog: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in (".catalog.tmp-99999", ".catalog.old-99999"):
        (data / name / "images").mkdir(parents=True)
    acquire.run(f"fashion:{sample_catalog}", data)
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".catalog")) == []
    assert Layout(data).catalog_csv.is_file()


def test_s3_mirror_follows_etags_and_deletions(s3_server, tmp_path: Path) -> None:
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    client.put_object(Bucket="shop", Key="spring/a.txt", Body=b"first")
    client.put_object(Bucket="shop", Key="spring/gone.txt", Body=b"soon deleted")
    root = storage.mirror_s3("s3://shop/spring", tmp_path / "mirror")
    assert (root / "a.txt").read_bytes() == b"first" and (root / "gone.txt").is_file()
    client.put_object(Bucket="shop", Key="spring/a.txt", Body=b"other")  # same size, new content
    client.delete_object(Bucket="shop", Key="spring/gone.txt")
    storage.mirror_s3("s3://shop/spring", tmp_path / "mirror")
    assert (root / "a.txt").read_bytes() == b"other" and not (root / "gone.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]  # the ETags live outside the mirror
    etags = next((tmp_path / "mirror" / ".etags").rglob("*.json"))
    assert list(json.loads(etags.read_text())) == ["a.txt"]


def test_acquire_decodes_only_new_and_changed_images(sample_catalog: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.catalog import ingest as ingest_module
    from runtime import imaging

    source = tmp_path / "source"
    shutil.copytree(sample_catalog, source)
    data = tmp_path / "data"
    first = acquire.run(f"fashion:{source}", data, workers=1, holdout=0.2)
    layout = Layout(data)
    assert first["decoded"] == first["accepted"] + first["held_out"] and first["kept"] == 0
    catalog_bytes = layout.catalog_csv.read_bytes()

    decoded: list[int] = []
    real = imaging.open_image
    monkeypatch.setattr(ingest_module.imaging, "open_image", lambda data, **kw: decoded.append(1) or real(data, **kw))
    again = acquire.run(f"fashion:{source}", data, workers=1, holdout=0.2)
    assert decoded == [] and again["decoded"] == 0 and again["kept"] == first["accepted"] + first["held_out"]
    assert layout.catalog_csv.read_bytes() == catalog_bytes  # the same rows, byte for byte
    assert {k: again[k] for k in ("input_rows", "accepted", "held_out", "rejected")} == \
        {k: first[k] for k in ("input_rows", "accepted", "held_out", "rejected")}

    accepted_images = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)["source_image"].tolist()
    images = [Path(p) for p in accepted_images]
    changed, removed = images[5], images[6]
    changed.write_bytes(images[7].read_bytes())  # re-shot: other bytes under the same name
    removed.unlink()
    missing = next(row.split(",")[0] for row in (source / "styles.csv").read_text().splitlines()[1:]
                   if not (source / "images" / f"{row.split(',')[0]}.jpg").exists() and row.split(",")[0] !=
                   removed.stem)
    shutil.copyfile(images[8], source / "images" / f"{missing}.jpg")  # a product whose photo arrived
    third = acquire.run(f"fashion:{source}", data, workers=1, holdout=0.2)
    assert len(decoded) == third["decoded"] == 2 and third["kept"] == first["accepted"] + first["held_out"] - 2
    assert third["input_rows"] == third["accepted"] + third["held_out"] + third["rejected"] == first["input_rows"]
    rows = {r["product_id"]: r for r in pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
            .to_dict("records") + pd.read_csv(layout.queries_csv, dtype=str, keep_default_na=False).to_dict("records")}
    assert removed.stem not in rows and missing in rows
    assert rows[changed.stem]["source_sha256"] == storage.sha256_bytes(changed.read_bytes())
    assert (layout.catalog / rows[changed.stem]["image"]).read_bytes() != b""
    fourth = acquire.run(f"fashion:{source}", data, workers=1, holdout=0.2, max_side=128)  # other settings
    assert fourth["kept"] == 0 and fourth["decoded"] == fourth["accepted"] + fourth["held_out"]


class _ETagServer:
    """A local HTTP server of in-memory files that answers If-None-Match with 304 and counts full answers."""

    def __init__(self, files: dict[str, bytes]) -> None:
        import http.server
        import threading

        self.files, self.full, self.not_modified = files, 0, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                etag = '"' + storage.sha256_bytes(body)[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    outer.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                outer.full += 1
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


def jpeg(colour: str) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (48, 64), colour).save(out, "JPEG")
    return out.getvalue()


def test_http_and_s3_images_are_not_fetched_again_when_their_etag_is_unchanged(s3_server, tmp_path: Path) -> None:
    images = [jpeg(c) for c in ("red", "green", "blue", "orange", "purple", "navy", "olive", "teal")]
    web = _ETagServer({f"{i}.jpg": images[i] for i in range(4)})
    client = storage.s3_client()
    client.create_bucket(Bucket="shop")
    for i in range(4, 8):
        client.put_object(Bucket="shop", Key=f"img/{i}.jpg", Body=images[i])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image,name,category\n" + "".join(
        f"p{i},{web.base}/{i}.jpg,Web {i},Web\n" for i in range(4)) + "".join(
        f"p{i},s3://shop/img/{i}.jpg,S3 {i},S3\n" for i in range(4, 8)))
    try:
        first = acquire.run(f"csv:{manifest}", tmp_path / "data", workers=1)
        assert first["accepted"] == 8 and first["decoded"] == 8 and web.full == 4
        catalog = pd.read_csv(Layout(tmp_path / "data").catalog_csv, dtype=str, keep_default_na=False)
        assert (catalog["source_etag"] != "").all()
        again = acquire.run(f"csv:{manifest}", tmp_path / "data", workers=1)
        assert again["kept"] == 8 and again["decoded"] == 0 and web.full == 4 and web.not_modified == 4
        web.files["1.jpg"] = jpeg("white")
        client.put_object(Bucket="shop", Key="img/5.jpg", Body=jpeg("black"))
        third = acquire.run(f"csv:{manifest}", tmp_path / "data", workers=1)
        assert third["decoded"] == 2 and third["kept"] == 6 and web.full == 5
    finally:
        web.server.shutdown()


@pytest.fixture()
def trained(sample_catalog: Path, tiny_hub_model: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A data dir acquired (20% held out) and finetuned once with the tiny hub model."""
    from pipeline import finetune

    data = tmp_path / "trained"
    acquire.run(f"fashion:{sample_catalog}", data, holdout=0.2)
    return data, finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=16, epochs=5)


def add_held_out(data: Path, n: int, category: str | None = None) -> None:
    """Move n held-out products into the catalog: images the model never saw (optionally of a new category)."""
    layout = Layout(data)
    catalog = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
    queries = pd.read_csv(layout.queries_csv, dtype=str, keep_default_na=False).head(n)
    if category is not None:
        queries["category"] = category
    pd.concat([catalog, queries[catalog.columns]]).to_csv(layout.catalog_csv, index=False)


def test_finetune_trains_nothing_on_the_same_images_and_labels(trained, tiny_hub_model: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import finetune

    data, first = trained
    export_id = storage.read_json(Layout(data).extractor / "extractor.json")["export_id"]
    assert first["reused"] is False and first["training"]["images"] == first["products"]
    monkeypatch.setattr(finetune, "train_head", lambda *a, **k: pytest.fail("trained again"))
    again = finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=16, epochs=5)
    assert again["reused"] is True and "the same images and labels" in again["decision"]
    assert storage.read_json(Layout(data).extractor / "extractor.json")["export_id"] == export_id
    add_held_out(data, 2)  # a few new products of known types: auto keeps the model
    kept = finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=16, epochs=5)
    assert kept["reused"] is True and kept["new_images"] == 2 and kept["new_classes"] == 0
    assert storage.read_json(Layout(data).extractor / "extractor.json")["export_id"] == export_id
    with pytest.raises(StageError, match="other options"):
        finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=24, epochs=5, retrain="never")


@pytest.mark.parametrize("change, retrain, trains", [
    ("many", "auto", True), ("new class", "auto", True), ("few", "always", True), ("many", "never", False),
    ("options", "auto", True)])
def test_retrain_follows_the_rule_and_the_option(trained, tiny_hub_model: Path, change: str, retrain: str,
                                                 trains: bool) -> None:
    from pipeline import finetune

    data, _first = trained
    export_id = storage.read_json(Layout(data).extractor / "extractor.json")["export_id"]
    if change in ("few", "many", "new class"):
        add_held_out(data, {"few": 2, "many": 16, "new class": 1}[change],
                     "Brand-new type" if change == "new class" else None)
    summary = finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=24 if change == "options" else 16, epochs=5,
                           retrain=retrain)
    assert summary["reused"] is not trains, summary["decision"]
    changed = storage.read_json(Layout(data).extractor / "extractor.json")["export_id"] != export_id
    assert changed is trains
    if change == "new class":
        assert summary["new_classes"] == 1 and "class" in summary["decision"]


def test_a_nightly_rerun_costs_what_changed_and_the_service_follows(tiny_hub_model: Path, tmp_path: Path) -> None:
    import io

    from benchmarks.catalog_refresh import apply_delta, make_catalog
    from pipeline import run as pipeline
    from service import create_app

    source, data = tmp_path / "source", tmp_path / "data"
    manifest = make_catalog(source, 400)  # every one of the 40 categories: the delta brings no new class
    options = {"encoder": f"hub:{tiny_hub_model}", "dim": 16}
    first = pipeline.run(f"csv:{manifest}", data, **options)
    assert first["acquire"]["decoded"] == 400 and first["finetune"]["reused"] is False
    again = pipeline.run(f"csv:{manifest}", data, **options)
    assert again["acquire"]["decoded"] == 0 and again["finetune"]["reused"] is True
    assert again["vectorize"]["backbone_images_computed"] == 0 and again["vectorize"]["shards_kept"] == \
        again["vectorize"]["shards"]
    assert again["index"]["unchanged"] is True and again["index"]["version"] == first["index"]["version"]

    delta = apply_delta(source, manifest, added=0.02, removed=0.02, renamed=0.02)  # 8 of each
    third = pipeline.run(f"csv:{manifest}", data, **options)
    assert third["acquire"]["decoded"] == 8 and third["acquire"]["kept"] == 392
    assert third["finetune"]["reused"] is True and third["finetune"]["new_images"] == 8  # 2% new: auto keeps it
    assert third["vectorize"]["backbone_images_computed"] == 8  # only the new photos through the backbone
    assert "unchanged" not in third["index"] and third["index"]["products"] == 400
    assert "delta" not in third["index"]  # 6% of the products changed: more than --delta-limit, a full build

    small = apply_delta(source, manifest, added=0.005, removed=0.005, renamed=0.01, seed=2)  # 2, 2 and 4
    fourth = pipeline.run(f"csv:{manifest}", data, **options)
    assert fourth["vectorize"]["backbone_images_computed"] == 2
    assert fourth["index"]["delta"]["base"] == third["index"]["version"]  # 2%: a delta over the full version
    assert {k: fourth["index"]["changes"][k] for k in ("removed", "added", "changed")} == \
        {"removed": 2, "added": 2, "changed": 4}
    assert fourth["index"]["products"] == 400
    delta_files = set(storage.read_json(data / "index" / "current" / "manifest.json")["files"])
    assert {"removed.json", "added.jsonl", "added.npy"} <= delta_files and "index.ann" not in delta_files

    app = create_app({"ARTIFACTS": str(data / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "cache"),
                      "RELOAD_CHECK_S": 0})
    client = app.test_client()
    assert client.get("/api/filters").get_json()["count"] == 400
    gone = set(delta["removed"]) | set(small["removed"])
    for product in gone:
        assert client.get(f"/api/products/{product}").status_code == 404
    for product in delta["renamed"] + small["renamed"]:
        assert client.get(f"/api/products/{product}").get_json()["name"].endswith("(new name)")
    for product in delta["added"] + small["added"] + small["renamed"]:
        photo = source / "images" / f"{int(product[1:]) // 1000:04d}" / f"{int(product[1:])}.jpg"
        answer = client.post("/api/search?k=3", data={"image": (io.BytesIO(photo.read_bytes()), "q.jpg")},
                             content_type="multipart/form-data").get_json()
        assert answer["results"][0]["product_id"] == product
        assert not {r["product_id"] for r in answer["results"]} & gone
        similar = client.get(f"/api/products/{product}/similar?k=5").get_json()["results"]
        assert len(similar) == 5 and not {r["product_id"] for r in similar} & (gone | {product})
        assert client.get(answer["results"][0]["image_url"]).status_code == 200

    from pipeline import remove  # sold out at 14:05: out of the delta's added products too, base untouched
    sold = [small["added"][0], small["renamed"][0]]
    out = remove.run(data, sold)
    assert out["removed_now"] == sold and out["delta"]["added"] == fourth["index"]["delta"]["added"] - 2
    assert out["delta"]["base"] == third["index"]["version"]
    client = create_app({"ARTIFACTS": str(data / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "cache"),
                         "RELOAD_CHECK_S": 0}).test_client()
    assert client.get("/api/filters").get_json()["count"] == 398
    assert all(client.get(f"/api/products/{product}").status_code == 404 for product in sold)
    assert client.get(f"/api/products/{small['added'][1]}").status_code == 200
