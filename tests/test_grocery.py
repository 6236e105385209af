"""The `grocery:` source (GroceryStoreDataset layout) and its shelf photos as evaluation queries."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from pipeline import acquire
from pipeline.catalog.grocery import queries_manifest, read_grocery
from pipeline.catalog.records import SourceError
from runtime.layout import Layout
from tests.conftest import shared_path

HEADER = ("Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),"
          "Product Description Path (str)\n")


def make_layout(root: Path) -> Path:
    """Two products (Granny-Smith, Oatly-Oat-Milk) in the dataset's own layout, with one bad line per listing."""
    dataset = root / "dataset"
    classes = [("Granny-Smith", 1, "Apple", 0, "Fruit/Apple/Granny-Smith", "green"),
               ("Oatly-Oat-Milk", 7, "Oat-Milk", 3, "Packages/Oat-Milk/Oatly-Oat-Milk", "blue")]
    lines = [HEADER]
    for name, cid, coarse, coarse_id, folder, colour in classes:
        iconic = dataset / "iconic-images-and-descriptions" / folder
        iconic.mkdir(parents=True)
        Image.new("RGB", (80, 80), colour).save(iconic / f"{name}_Iconic.jpg")
        (iconic / f"{name}_Description.txt").write_text(f"{name} is\n  a fine   product.\n")
        lines.append(f"{name},{cid},{coarse},{coarse_id},/iconic-images-and-descriptions/{folder}/{name}_Iconic.jpg,"
                     f"/iconic-images-and-descriptions/{folder}/{name}_Description.txt\n")
        for split in ("train", "val"):
            (dataset / split / folder).mkdir(parents=True)
            for n in (1, 2):
                Image.new("RGB", (90, 70), colour).save(dataset / split / folder / f"{name}_00{n}.jpg")
    (dataset / "classes.csv").write_text("".join(lines))
    for split in ("train", "val"):
        listing = [f"{split}/{folder}/{name}_00{n}.jpg, {cid}, {coarse_id}"
                   for name, cid, _, coarse_id, folder, _ in classes for n in (1, 2)]
        if split == "train":  # a line whose file is missing, and one of a class classes.csv does not have
            listing += ["train/Fruit/Apple/Granny-Smith/missing.jpg, 1, 0", "train/x.jpg, 99, 9"]
        (dataset / f"{split}.txt").write_text("\n".join(listing) + "\n")
    return root


def test_one_product_per_fine_class_with_its_iconic_image_and_train_photos(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "grocery")
    summary = acquire.run(f"grocery:{root}", tmp_path / "data")
    layout = Layout(tmp_path / "data")
    with open(layout.catalog_csv, newline="", encoding="utf-8") as fh:
        catalog = list(csv.DictReader(fh))
    assert summary["products"] == 2 and summary["accepted"] == 6 and summary["rejected"] == 2
    apple = [r for r in catalog if r["product_id"] == "1"]
    assert len(apple) == 3 and "Iconic" in apple[0]["source_image"]  # the catalog image first
    assert all("/val/" not in r["source_image"] for r in catalog)  # val.txt is for evaluation only
    assert {(r["name"], r["category"], r["department"]) for r in apple} == {("Granny-Smith", "Apple", "Fruit")}
    assert apple[0]["description"] == "Granny-Smith is a fine product."
    with open(layout.rejects_csv, newline="", encoding="utf-8") as fh:
        reasons = sorted(r["reason"] for r in csv.DictReader(fh))
    assert reasons[0].startswith("image missing") and reasons[1].startswith("unknown class id '99'")
    records, _ = read_grocery(root / "dataset", category_column="department")  # the dataset folder itself
    assert {r.category for r in records} == {"Fruit", "Packages"}
    queries = tmp_path / "val.csv"
    assert queries_manifest(root, queries) == 4
    with open(queries, newline="", encoding="utf-8") as fh:
        assert {r["name"] for r in csv.DictReader(fh)} == {"Granny-Smith", "Oatly-Oat-Milk"}


def test_not_the_grocery_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not the GroceryStoreDataset layout"):
        acquire.run(f"grocery:{tmp_path}", tmp_path / "data")
    make_layout(tmp_path / "g")
    with pytest.raises(SourceError, match="no column 'colour'"):
        read_grocery(tmp_path / "g", category_column="colour")


def test_the_real_grocery_dataset() -> None:
    root = shared_path("data", "grocery")
    records, rejects = read_grocery(root)
    products = {r.product_id: r for r in records}
    assert not rejects and len(products) == 81 and len(records) == 81 + 2640
    assert products["0"].name == "Golden-Delicious" and products["0"].category == "Apple"
    assert products["0"].metadata["description"].startswith("Golden Delicious")
