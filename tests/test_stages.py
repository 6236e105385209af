"""Finetune, vectorize, index and evaluate on a generated catalog, with the TF Hub path on a local SavedModel."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import acquire, evaluate, finetune, index, vectorize
from pipeline.catalog.table import read_catalog
from pipeline.common.errors import StageError
from pipeline.indexing.annoy_tuning import ServingCost
from runtime import artifacts
from runtime.embeddings import load_embeddings
from runtime.extractor import Extractor, load_extractor
from runtime.items import read_items
from runtime.layout import ITEMS_FILE, WRITTEN, Layout
from runtime.preprocess import decode_image, prepare_array
from tests.helpers import ROOT

REPORT_KEYS = {"precision_at_1", "precision_at_5", "precision_at_10", "map_at_10", "ann_recall_at_10", "n_queries",
               "latency_ms_p50"}


def test_hub_encoder_loads_a_local_savedmodel(tiny_hub_model: Path) -> None:
    from pipeline.encoders.backbones import load_encoder

    encoder = load_encoder(f"hub:{tiny_hub_model}")
    features = encoder(np.full((3, 224, 224, 3), 128.0, np.float32))
    assert features.shape == (3, encoder.feature_dim) and encoder.feature_dim == 12 + 48
    assert encoder.fingerprint.startswith("hub-")
    assert load_encoder(str(tiny_hub_model)).fingerprint == encoder.fingerprint  # a bare SavedModel path works too


@pytest.mark.parametrize("handle", ["hub:/nonexistent/model", "hub:http://127.0.0.1:9/bit/m-r50x1/1"])
def test_hub_handle_that_cannot_be_fetched_is_a_clear_error(handle: str) -> None:
    from pipeline.encoders.backbones import load_encoder

    with pytest.raises(StageError, match=r"could not load the TF Hub model .*downloaded once \(network needed\) into "
                                         r"TFHUB_CACHE_DIR .*--encoder hub:/path/to/model"):
        load_encoder(handle)


@pytest.mark.parametrize("name, weights, message", [
    ("resnet-9000", None, "unknown encoder"),
    ("mediapipe-embedder", None, "needs --encoder-weights"),
    ("autoencoder", None, "needs its trained weights"),
    ("mobilenet-v1-0.25", "/no/such/file.h5", "not found"),
])
def test_encoder_misconfiguration_is_a_clear_error(name: str, weights: str | None, message: str) -> None:
    from pipeline.encoders.backbones import load_encoder

    with pytest.raises(StageError, match=message):
        load_encoder(name, weights)


def test_finetune_writes_extractor_curves_and_uses_one_backbone_pass_per_image(built: Path) -> None:
    layout = Layout(built)
    summary = json.loads((layout.model / "finetune.json").read_text())
    catalog = read_catalog(layout.catalog_csv)
    assert summary["backbone_images_computed"] == catalog["sha256"].nunique()
    assert summary["finetuned"] and summary["dim"] == 32 and summary["classes"] == 10
    assert (layout.model / "training_curves.png").stat().st_size > 1000
    config = json.loads((layout.extractor / "extractor.json").read_text())
    assert config["format"] == "savedmodel" and config["dim"] == 32
    assert json.loads((layout.embeddings / "embeddings.json").read_text())["backbone_images_computed"] == 0


def test_extractor_reproduces_the_catalog_embeddings(built: Path) -> None:
    layout = Layout(built)
    catalog = read_catalog(layout.catalog_csv)
    vectors = load_embeddings(built)
    assert vectors.shape == (len(catalog), 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    extractor = load_extractor(layout.extractor)
    images = np.stack([decode_image(str(layout.catalog / p)).numpy() for p in catalog["image"][:5]])
    assert np.allclose(extractor.embed(images), vectors[:5], atol=1e-4)
    assert np.allclose(extractor.head(extractor.features(images)), vectors[:5], atol=1e-4)


def test_index_folder_is_self_describing_and_verified(built: Path, tmp_path: Path) -> None:
    folder = artifacts.resolve_index(built)
    manifest = artifacts.verify(folder)
    catalog = read_catalog(Layout(built).catalog_csv)
    assert manifest["count"] == len(catalog) and manifest["metric"] == "angular" and manifest["n_trees"] == 8
    assert manifest["search_k_measurements"][-1]["recall_at_10"] >= 0.99
    assert manifest["exact_ms_per_query"] > 0
    assert manifest["index_bytes"] == (folder / "index.ann").stat().st_size and manifest["build_peak_rss_mb"] > 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("manifest.json", "index.ann", "items.jsonl"):  # a service user can read them
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name
    assert {"index.ann", "items.jsonl", "extractor/extractor.json"} <= set(manifest["files"])
    items = read_items(folder / ITEMS_FILE)
    assert [i["id"] for i in items] == list(range(len(catalog)))
    assert [i["product_id"] for i in items] == catalog["product_id"].tolist()
    assert items[0]["metadata"]["baseColour"] and "sha256" not in items[0]["metadata"]
    annoy = artifacts.load_annoy(folder, manifest)
    assert annoy.get_nns_by_item(3, 1) == [3]
    assert not (folder / "vectors.npy").exists()  # index.ann holds the only copy of the vectors
    vectors = artifacts.load_vectors(folder, manifest, annoy)
    assert np.array_equal(vectors, load_embeddings(built)) and not vectors.flags.writeable
    from PIL import Image

    with Image.open(folder / items[0]["thumbnail"]) as thumb:
        assert max(thumb.size) <= 320 and thumb.mode == "RGB"

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "items.jsonl").write_text((copy / "items.jsonl").read_text().replace("Northwind", "Southwind"))
    with pytest.raises(artifacts.ArtifactError, match=r"items.jsonl .*(sha256|bytes)"):
        artifacts.verify(copy)
    (copy / "index.ann").unlink()
    with pytest.raises(artifacts.ArtifactError, match=r"index.ann is listed in the manifest but missing"):
        artifacts.verify(copy)


def test_strategy_prefers_the_exact_scan_unless_annoy_is_clearly_faster() -> None:
    assert index.choose_strategy(ServingCost(exact_ms=0.04, annoy_ms=0.08)) == "exact"
    assert index.choose_strategy(ServingCost(exact_ms=0.09, annoy_ms=0.08)) == "exact"  # recall 1 is worth a little
    assert index.choose_strategy(ServingCost(exact_ms=0.5, annoy_ms=0.08)) == "annoy"
    assert index.choose_strategy(None) == "annoy"  # a fixed --search-k is not second-guessed


def test_a_cold_first_scan_does_not_decide_the_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first scan of a build paid page faults and BLAS start-up (7.8 ms where a warm scan takes 0.1 to 0.4 ms)
    and made a small catalog serve by Annoy; the measurement warms both paths up and takes the median round."""
    from annoy import AnnoyIndex

    from pipeline.indexing import annoy_tuning

    vectors = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = AnnoyIndex(16, "angular")
    for i, row in enumerate(vectors):
        ann.add_item(i, row.tolist())
    ann.build(4)
    scans = []
    real = annoy_tuning.exact_top_k

    def cold_then_warm(*args, **kwargs):  # the first scan of the process is slow, as on a fresh worker
        scans.append(1)
        if len(scans) == 1:
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(annoy_tuning, "exact_top_k", cold_then_warm)
    cost = annoy_tuning.serving_cost(ann, vectors, search_k=2000 * 4)
    assert cost.exact_ms < 100 and index.choose_strategy(cost) == "exact", cost


@pytest.mark.parametrize("exact_ms, strategy", [(0.0, "exact"), (1e6, "annoy")])
def test_index_serves_by_the_faster_of_its_own_two_measurements(built: Path, tmp_path: Path, exact_ms: float,
                                                                 strategy: str, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    data = tmp_path / "data"
    shutil.copytree(built, data, symlinks=True)
    monkeypatch.setattr(index, "serving_cost", lambda idx, vectors, search_k: ServingCost(exact_ms, 0.1))
    manifest = index.run(data, trees=4)
    assert manifest["exact_ms_per_query"] == exact_ms and manifest["strategy"] == strategy
    assert json.loads((data / "index/current/manifest.json").read_text())["strategy"] == strategy


def test_reindexing_switches_current_atomically_and_prunes(built: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built, data, symlinks=True)
    first = (data / "index/current").resolve().name
    versions = [index.run(data, trees=trees, keep=2)["version"] for trees in (4, 5)]  # options differ: new versions
    assert (data / "index/current").resolve().name == versions[-1]
    kept = sorted(p.name for p in (data / "index").iterdir() if p.is_dir() and not p.is_symlink())
    assert kept == sorted(versions) and first not in kept


def test_evaluate_reports_exactly_the_agreed_keys(built: Path, tmp_path: Path) -> None:
    layout = Layout(built)
    report = tmp_path / "report.json"
    result = evaluate.run(built, f"csv:{layout.queries_csv}", label_column="category", report=report)
    assert set(json.loads(report.read_text())) == REPORT_KEYS == set(result)
    assert result["n_queries"] == len(read_catalog(layout.queries_csv))
    # Ten product types, so chance is about 0.1; a tiny random backbone plus a head trained on ~60 products
    # reaches about 0.35 here (the real encoders' figures are in test_quality.py).
    assert result["precision_at_5"] > 0.25
    assert result["ann_recall_at_10"] >= 0.95 and result["latency_ms_p50"] > 0
    assert report.with_suffix(".png").stat().st_size > 10_000
    details = json.loads(report.with_suffix(".details.json").read_text())
    assert details["label_column"] == "category" and details["search_k"] > 0


def test_evaluate_on_catalog_items_does_not_count_finding_itself(built: Path, tmp_path: Path) -> None:
    layout = Layout(built)
    result = evaluate.run(built, f"csv:{_catalog_as_manifest(layout, tmp_path, 12)}", label_column="articleType",
                          report=tmp_path / "r.json")
    # Were each query's own item counted, every query's first result would be itself: precision@1 = 1.0.
    assert result["n_queries"] == 12 and result["precision_at_1"] < 1.0


def _catalog_as_manifest(layout: Layout, tmp_path: Path, n: int) -> Path:
    catalog = read_catalog(layout.catalog_csv).head(n).drop(columns=["id"])
    catalog.insert(0, "id", catalog.pop("product_id"))
    catalog["image"] = [str(layout.catalog / p) for p in catalog["image"]]
    path = tmp_path / "queries.csv"
    catalog.to_csv(path, index=False)
    return path


def test_vectorize_resumes_after_a_kill_with_identical_bytes(built: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for data in (full, resumed):  # same catalog and extractor, empty feature caches
        shutil.copytree(built / "catalog", data / "catalog")
        shutil.copytree(built / "model", data / "model")
    vectorize.run(full, shard_rows=16, batch_size=8)

    real = Extractor.features
    calls = {"n": 0}

    def dies_on_the_fifth_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(self, images)

    monkeypatch.setattr(Extractor, "features", dies_on_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        vectorize.run(resumed, shard_rows=16, batch_size=8)
    done = sorted(p.name for p in (resumed / "embeddings").glob("part-*.npy"))
    assert done == ["part-00000.npy", "part-00001.npy"]  # 2 batches of 8 per shard: killed inside shard 2
    monkeypatch.setattr(Extractor, "features", real)
    summary = vectorize.run(resumed, shard_rows=16, batch_size=8)
    assert summary["shards_kept"] == 2
    full_files = sorted((full / "embeddings").glob("part-*.npy"))
    assert len(full_files) == summary["shards"] > 2
    for path in full_files:
        assert path.read_bytes() == (resumed / "embeddings" / path.name).read_bytes(), path.name


def test_vectorize_after_products_were_added_embeds_only_new_ones(sample_catalog: Path, tiny_hub_model: Path,
                                                                    tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    shutil.copytree(sample_catalog, source)
    held_back = tmp_path / "later"
    held_back.mkdir()
    for name in ("10060.jpg", "10061.jpg", "10062.jpg"):
        shutil.move(source / "images" / name, held_back / name)
    acquire.run(f"fashion:{source}", data)
    finetune.run(data, encoder=f"hub:{tiny_hub_model}", no_finetune=True)
    first = vectorize.run(data, shard_rows=16)
    assert first["backbone_images_computed"] == 0  # finetune cached every image's features
    for path in held_back.iterdir():
        shutil.move(path, source / "images" / path.name)
    acquire.run(f"fashion:{source}", data)
    second = vectorize.run(data, shard_rows=16)
    assert second["backbone_images_computed"] == 3
    assert second["rows"] == first["rows"] + 3
    assert index.run(data, trees=4)["count"] == second["rows"]


def test_raw_features_without_finetuning(built: Path, tiny_hub_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    summary = finetune.run(data, encoder=f"hub:{tiny_hub_model}", no_finetune=True)
    assert not summary["finetuned"]
    assert vectorize.run(data)["dim"] == summary["feature_dim"]


def test_finetune_refuses_a_bad_label_column(built: Path, tiny_hub_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    with pytest.raises(StageError, match="--label-column 'colour' is not a catalog column"):
        finetune.run(data, encoder=f"hub:{tiny_hub_model}", label_column="colour")
    catalog = read_catalog(data / "catalog/catalog.csv")
    catalog["shop"] = "the one shop"
    catalog.to_csv(data / "catalog/catalog.csv", index=False)
    with pytest.raises(StageError, match=r"'shop' has 1 distinct value.*at least two"):
        finetune.run(data, encoder=f"hub:{tiny_hub_model}", label_column="shop")


@pytest.mark.parametrize("size, side", [((224, 224), 224), ((300, 200), 224), ((1024, 900), 224), ((160, 120), 224),
                                        ((348, 348), 448), ((500, 300), 448)])
def test_service_and_pipeline_prepare_an_image_identically(tmp_path: Path, size: tuple[int, int], side: int) -> None:
    """Shrunk, enlarged (a multi-crop query's 448 from a smaller photo) or both at once: the same pixels."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.BILINEAR).save(tmp_path / "p.jpg", quality=95)
    from_file = decode_image(str(tmp_path / "p.jpg"), side).numpy()
    in_memory = prepare_array(np.asarray(Image.open(tmp_path / "p.jpg").convert("RGB")), side)
    assert from_file.shape == in_memory.shape == (side, side, 3) and from_file.dtype == in_memory.dtype == np.uint8
    diff = np.abs(from_file.astype(float) - in_memory.astype(float))
    if min(size) < 2 * side:  # same pixels from both decoders, same resize op
        assert diff.max() == 0
    else:  # the pipeline decodes big JPEGs at a reduced DCT scale: close, not identical
        assert diff.mean() < 3


def test_every_file_a_run_writes_is_named_by_the_contract_and_documented(built: Path) -> None:
    report = evaluate.run(built, f"csv:{Layout(built).queries_csv}", label_column="category")  # default report
    assert Layout(built).report.is_file() and report["n_queries"] > 0
    written = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file() or p.is_symlink())
    unnamed = [p for p in written if not any(fnmatch.fnmatchcase(p, pattern) for pattern in WRITTEN)]
    assert written and not unnamed, unnamed
    readme = (ROOT / "data" / "README.md").read_text()
    assert [pattern for pattern in WRITTEN if f"`{pattern}`" not in readme] == []
    for stage_output in ("cache/thumbs/*.jpg", "eval/queries/*", "index/current"):
        assert stage_output in WRITTEN


def test_manifest_records_no_path_of_the_machine_that_built_it(built: Path) -> None:
    manifest_text = (built / "index" / "current" / "manifest.json").read_text()
    assert str(built) not in manifest_text and str(built.resolve()) not in manifest_text
    manifest = json.loads(manifest_text)
    assert manifest["source"] == json.loads((built / "catalog" / "summary.json").read_text())["source"]
