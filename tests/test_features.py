"""The memory-mapped feature cache, the streamed training batches, and vectorize over images it cannot read."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import index, vectorize
from pipeline.catalog.table import read_catalog
from pipeline.features.cache import FeatureCache
from pipeline.training.batches import training_dataset
from runtime.layout import Layout


def keys_of(n: int, offset: int = 0) -> list[str]:
    return [f"{i + offset:064x}" for i in range(n)]


def test_cache_finds_rows_across_parts_and_after_reopening(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "fp")
    assert len(cache) == 0 and cache.count_missing(keys_of(3)) == 3
    first = np.arange(12, dtype=np.float32).reshape(4, 3)
    second = -np.arange(9, dtype=np.float32).reshape(3, 3)
    cache.add(keys_of(4), first)
    cache.add(keys_of(3, offset=10), second)
    wanted = [keys_of(1, 11)[0], keys_of(1, 2)[0], keys_of(1, 2)[0], keys_of(1, 0)[0]]
    expected = np.stack([second[1], first[2], first[2], first[0]])
    assert np.array_equal(cache.get(wanted), expected)
    reopened = FeatureCache(tmp_path / "fp")
    assert len(reopened) == 7 and np.array_equal(reopened.get(wanted), expected)
    assert keys_of(1, 5)[0] not in reopened and reopened.count_missing(keys_of(6)) == 2
    with pytest.raises(KeyError, match=r"1 key.*not in the feature cache"):
        reopened.get(keys_of(6)[4:5])


def test_a_part_written_twice_is_the_same_files_and_a_part_without_keys_does_not_count(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    rows = np.ones((5, 4), np.float32)
    part = cache.add(keys_of(5), rows)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert FeatureCache(tmp_path).add(keys_of(5), rows) == part  # a retried or speculative task
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before and len(before) == 2
    np.save(tmp_path / "part-killed.npy", rows)  # a writer killed before its keys file
    (tmp_path / "part-short.keys").write_bytes(b"f" * 64 * 3)  # keys for rows that are not there
    reopened = FeatureCache(tmp_path)
    assert len(reopened) == 5 and len(reopened.parts) == 1


def test_many_small_parts_merge_and_still_answer(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for p in range(40):
        cache.add(keys_of(3, offset=100 * p), np.full((3, 2), p, np.float32))
    got = cache.get([keys_of(1, 100 * p + 2)[0] for p in (39, 0, 17)])
    assert got[:, 0].tolist() == [39, 0, 17] and len(cache._segments) <= 17


def test_training_batches_stream_every_row_once_per_epoch_in_a_new_order(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for p in range(6):  # 6 parts of 10 rows; feature 0 is the row's number
        features = np.zeros((10, 4), np.float32)
        features[:, 0] = np.arange(10 * p, 10 * p + 10)
        cache.add(keys_of(10, offset=10 * p), features)
    keys = keys_of(60)
    labels = np.arange(60) % 7
    window = 25 * 4 * 4  # 25 rows: the shuffle works across parts, never on the whole cache at once
    dataset = training_dataset(cache, keys, labels, batch_size=8, seed=1, window_bytes=window)
    epochs = []
    for _ in range(2):
        rows, seen_labels = [], []
        for x, y in dataset:
            rows.extend(x.numpy()[:, 0].astype(int).tolist())
            seen_labels.extend(y.numpy().tolist())
        assert sorted(rows) == list(range(60)) and seen_labels == [r % 7 for r in rows]
        epochs.append(rows)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_vectorize_skips_an_unreadable_image_records_it_and_the_index_leaves_it_out(built: Path, tmp_path: Path
                                                                                       ) -> None:
    from service import create_app

    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    shutil.copytree(built / "model", data / "model")
    layout = Layout(data)
    catalog = read_catalog(layout.catalog_csv)
    broken = 5
    (layout.catalog / catalog["image"][broken]).write_bytes(b"\xff\xd8\xff not a jpeg after all")
    summary = vectorize.run(data, shard_rows=16)  # an empty feature cache: the backbone meets the broken file
    assert summary["unreadable"] == 1 and summary["backbone_images_computed"] == catalog["sha256"].nunique() - 1
    with open(layout.vectorize_rejects_csv, newline="") as fh:
        rejects = list(csv.DictReader(fh))
    assert [(r["row"], r["product_id"]) for r in rejects] == [(str(broken), catalog["product_id"][broken])]
    assert rejects[0]["reason"]
    shard = np.load(layout.shard(0))
    assert np.isnan(shard[broken]).all() and not np.isnan(np.delete(shard, broken, axis=0)).any()
    assert vectorize.run(data, shard_rows=16)["shards_kept"] == summary["shards"]  # a rerun keeps it all

    manifest = index.run(data, trees=4)
    assert manifest["count"] == len(catalog) - 1 and manifest["unreadable_rows"] == 1
    items = [json.loads(line) for line in (layout.current_index / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == list(range(len(catalog) - 1))
    assert catalog["product_id"][broken] not in {i["product_id"] for i in items}
    assert items[broken]["product_id"] == catalog["product_id"][broken + 1]

    client = create_app({"ARTIFACTS": str(layout.current_index), "LOAD_IN_BACKGROUND": False,
                         "ARTIFACTS_CACHE": str(tmp_path / "cache")}).test_client()
    image = io.BytesIO()
    Image.open(layout.catalog / catalog["image"][broken + 1]).save(image, "JPEG")
    found = client.post("/api/search", data={"image": (io.BytesIO(image.getvalue()), "q.jpg")},
                        content_type="multipart/form-data")
    assert found.status_code == 200, found.get_json()
    assert found.get_json()["results"][0]["product_id"] == catalog["product_id"][broken + 1]
    assert client.get(f"/api/products/{catalog['product_id'][broken]}/similar").status_code == 404


def test_a_part_deleted_while_the_cache_is_open_is_computed_again_not_an_error(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    part = cache.add(keys_of(4), np.ones((4, 3), np.float32))
    cache.add(keys_of(2, offset=50), np.zeros((2, 3), np.float32))
    part.unlink()  # cache/ is safe to delete, also under a running job's feet
    assert cache.count_missing(keys_of(4) + keys_of(2, offset=50)) == 4
    assert np.array_equal(cache.get(keys_of(2, offset=50)), np.zeros((2, 3), np.float32))
    cache.add(keys_of(4), np.full((4, 3), 2, np.float32))  # what compute_missing does next
    assert np.array_equal(cache.get(keys_of(4)), np.full((4, 3), 2, np.float32))
