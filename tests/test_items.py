"""The service's compact item store: same answers as parsing every line, without a dict per product."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.artifacts import ArtifactError
from runtime.items import ItemStore


def write(path: Path, items: list[dict], blank_lines: bool = False) -> Path:
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n", encoding="utf-8")
    return path


def item(i: int, product_id: str, category: str, images: tuple[int, ...] | None = None, **metadata: str) -> dict:
    return {"id": i, "product_id": product_id, "name": f"n{i}", "category": category, "image": "",
            "thumbnail": "", "images": [{"id": j, "image": "", "thumbnail": ""} for j in images or (i,)],
            "metadata": metadata}


def test_items_are_parsed_on_demand_and_indexed_by_product_and_value(tmp_path: Path) -> None:
    items = [item(0, "0042", "Shirts", (0, 4), colour="Blue"), item(1, "é-7", "Shoes"),
             item(2, "10", "Shirts", colour="Red", season="Fall"), item(3, "9", "Shoes", (3, 5), colour="Blue")]
    store = ItemStore(write(tmp_path / "items.jsonl", items, blank_lines=True))
    assert len(store) == 4 and list(store) == items and store[-1] == items[3]
    assert [store.lookup(p) for p in ("0042", "é-7", "10", "9")] == [0, 1, 2, 3]
    with pytest.raises(KeyError):
        store.lookup("42")  # ids are text: 0042 is not 42
    with pytest.raises(IndexError):
        store[4]
    assert store.columns == ["category", "colour", "season"]
    by_colour = {v: ids.tolist() for v, ids in store.ids_by_value["colour"].items()}
    assert by_colour == {"Blue": [0, 3], "Red": [2], "": [1]}  # no value is the value ''
    season = store.ids_by_value["season"]
    assert season["Fall"].tolist() == [2] and season[""].tolist() == [0, 1, 3]
    assert store.image_counts.tolist() == [2, 1, 1, 2] and store.image_ids.tolist() == [0, 4, 1, 2, 3, 5]
    assert store.nbytes() < 1000


def test_bad_item_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="line 2 has id 5, expected 1"):
        ItemStore(write(tmp_path / "a.jsonl", [item(0, "a", "x"), item(5, "b", "x")]))
    with pytest.raises(ArtifactError, match="product ids are not unique"):
        ItemStore(write(tmp_path / "b.jsonl", [item(0, "a", "x"), item(1, "a", "x")]))
    (tmp_path / "c.jsonl").write_bytes(b"")
    assert len(ItemStore(tmp_path / "c.jsonl")) == 0


def test_a_large_store_keeps_a_few_bytes_per_product(tmp_path: Path) -> None:
    n = 20_000
    items = [item(i, f"P{i:06d}", f"c{i % 37}", colour=f"k{i % 5}", gender="W" if i % 2 else "M") for i in range(n)]
    store = ItemStore(write(tmp_path / "items.jsonl", items))
    assert store.nbytes() / n <= 51  # offsets 16 + product id 7 + order 8 + 3 columns x 4 + images 8 (a dict: ~1 KB)
    rng = np.random.default_rng(0)
    for i in rng.integers(0, n, 50).tolist():
        assert store[store.lookup(f"P{i:06d}")] == items[i]


def test_item_lines_are_the_same_whatever_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from pipeline.indexing import items as items_module

    rng = np.random.default_rng(0)
    products = [f"P{p:03d}" for p in rng.integers(0, 40, 120)]  # images of a product scattered over the rows
    table = pd.DataFrame({"product_id": products, "name": [f"name {p}" for p in products],
                          "category": ["c"] * 120, "image": [f"images/{i}.jpg" for i in range(120)],
                          "sha256": [f"{i:064x}" for i in range(120)], "colour": ["", "Blue", "Red"] * 40})
    whole = [json.loads(line) for line in items_module.item_lines(table)]
    monkeypatch.setattr(items_module, "ITEM_CHUNK", 7)
    assert [json.loads(line) for line in items_module.item_lines(table)] == whole
    assert [item["product_id"] for item in whole] == list(dict.fromkeys(products))
    assert sorted(image["id"] for item in whole for image in item["images"]) == list(range(120))
    for item in whole:
        assert all(products[image["id"]] == item["product_id"] for image in item["images"])
        assert item["image"] == item["images"][0]["image"]
        assert item["metadata"] == ({"colour": table["colour"][item["images"][0]["id"]]}
                                    if table["colour"][item["images"][0]["id"]] else {})
