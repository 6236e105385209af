"""The GroceryStoreDataset layout as a catalog source (`grocery:DIR`) and its shelf photos as a query manifest.

`DIR/dataset/` (or `DIR` itself) holds `classes.csv`, `train.txt`, `val.txt`, `train/`, `val/` and
`iconic-images-and-descriptions/`. One product per fine class: its id is the class id, its name the class name as
written in `classes.csv`, its category the coarse class name; its images are the iconic (catalog) image plus the
shelf photos that `train.txt` lists. `val.txt` is left out of the catalog: its photos are the queries.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pipeline.catalog.records import Record, Reject, SourceError

CLASSES_CSV = "classes.csv"
SPLITS = ("train", "val")
COLUMNS = {"name": "Class Name (str)", "id": "Class ID (int)", "coarse": "Coarse Class Name (str)",
           "coarse_id": "Coarse Class ID (int)", "iconic": "Iconic Image Path (str)",
           "description": "Product Description Path (str)"}


def dataset_root(location: Path) -> Path:
    """Return the folder holding `classes.csv`: `location/dataset` or `location` itself."""
    for root in (location / "dataset", location):
        if (root / CLASSES_CSV).is_file():
            return root
    raise SourceError(f"{location} is not the GroceryStoreDataset layout: no {CLASSES_CSV} in it or in its "
                      "dataset/ folder")


def read_classes(root: Path) -> dict[str, dict[str, str]]:
    """Return each fine class id's row of `classes.csv` (name, coarse class, iconic image and description paths)."""
    with open(root / CLASSES_CSV, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        absent = [c for c in COLUMNS.values() if c not in (reader.fieldnames or [])]
        if absent:
            raise SourceError(f"{root / CLASSES_CSV} lacks column(s) {absent}")
        return {row[COLUMNS["id"]].strip(): {k: (row[c] or "").strip() for k, c in COLUMNS.items()}
                for row in reader if row[COLUMNS["id"]]}


def split_photos(root: Path, split: str) -> list[tuple[str, str, str]]:
    """Return (path relative to the dataset, fine class id, where) for each line of `train.txt` or `val.txt`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise SourceError(f"{listing} not found")
    out = []
    for line_no, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if any(fields):
            out.append((fields[0], fields[1] if len(fields) > 1 else "", f"{listing.name}:{line_no}"))
    return out


def read_grocery(location: Path, category_column: str | None = None) -> tuple[list[Record], list[Reject]]:
    """Read the GroceryStoreDataset layout as products: iconic image plus `train.txt` photos per fine class.

    Args:
        location: the folder holding `dataset/`, or `dataset/` itself.
        category_column: the metadata column used as category (default `coarse_class`, the coarse class name).

    Returns:
        One record per image (every image of a class carries the same product metadata), and the rejects.
    """
    root = dataset_root(location)
    classes = read_classes(root)
    records, rejects = [], []
    products = {}
    for class_id, row in classes.items():
        description = _text(root / row["description"].lstrip("/")) if row["description"] else ""
        department = Path(row["iconic"].lstrip("/")).parts[1:2]
        meta = {"class_id": class_id, "coarse_class": row["coarse"], "coarse_class_id": row["coarse_id"],
                "department": department[0] if department else "", "description": description}
        column = category_column or "coarse_class"
        if column not in meta and column != "name":
            raise SourceError(f"grocery: no column {column!r}; use one of {['name', *meta]}")
        products[class_id] = Record(class_id, row["name"], row["name"] if column == "name" else meta[column], "",
                                    meta)
    images = [(classes[c]["iconic"].lstrip("/"), c, f"{CLASSES_CSV}:iconic") for c in classes]
    images += split_photos(root, "train")
    for rel, class_id, where in images:
        if class_id not in products:
            rejects.append(Reject(class_id, where, f"unknown class id {class_id!r} (not in {CLASSES_CSV})"))
            continue
        path = root / rel
        if not rel or not path.is_file():
            rejects.append(Reject(class_id, where, f"image missing: {rel or 'no path'}"))
            continue
        product = products[class_id]
        records.append(Record(class_id, product.name, product.category, str(path), dict(product.metadata), where))
    return records, rejects


def queries_manifest(location: Path, out: Path, split: str = "val") -> int:
    """Write a `csv:` source of a split's shelf photos (id, image, name = the class name, category); return its rows.

    Evaluate with it and `--label-column name` to measure product-level precision against a `grocery:` index.
    """
    root = dataset_root(location)
    classes = read_classes(root)
    rows = [{"id": re.sub(r"[^\w.-]+", "-", Path(rel).with_suffix("").as_posix()),
             "image": str((root / rel).resolve()), "name": classes[c]["name"], "category": classes[c]["coarse"],
             "class_id": c}
            for rel, c, _ in split_photos(root, split) if c in classes]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "name", "category", "class_id"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _text(path: Path) -> str:
    """A description file as one line (empty when absent)."""
    try:
        return " ".join(path.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return ""
