"""The acquired catalog as the later stages read it, the stratified split that acquire and finetune share, and the
catalog as an index's `items.jsonl` lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.layout import Layout, thumbnail_name

if TYPE_CHECKING:  # pandas is imported when a catalog is read, not by `--help`
    import pandas as pd


def read_catalog(path: Path) -> pd.DataFrame:
    """Read a catalog CSV with every column as text (product ids such as 00123 stay as written)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_catalog(layout: Layout) -> pd.DataFrame:
    """Read the acquired catalog, with a clear error when acquire has not run or accepted nothing."""
    if not layout.catalog_csv.is_file():
        raise FileNotFoundError(f"no catalog at {layout.catalog_csv}; run `python -m pipeline acquire` first")
    catalog = read_catalog(layout.catalog_csv)
    if catalog.empty:
        raise ValueError(f"{layout.catalog_csv} has no products: every row was rejected (see rejects.csv)")
    return catalog


def catalog_inputs(layout: Layout) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Return the catalog table, its image content keys and its image paths, in catalog order."""
    catalog = load_catalog(layout)
    paths = [str(layout.catalog / p) for p in catalog["image"]]
    return catalog, catalog["sha256"].tolist(), paths


def holdout_rows(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row numbers into kept and held out, `fraction` of each label's rows held out (labels with one row stay).

    Works on the label array alone (no object per row), so a million-row catalog splits in well under a second.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(codes, kind="stable")  # rows of each label together, ascending within it
    held = []
    for members in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        n = int(round(len(members) * fraction)) if len(members) > 1 else 0
        held.append(rng.permutation(members)[: min(n, len(members) - 1)])
    is_held = np.zeros(len(codes), bool)
    is_held[np.concatenate(held) if held else []] = True
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def holdout_split(rows: list[dict], fraction: float, column: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split catalog rows into kept and held out, `fraction` of each label's products held out (labels with one
    product stay); the images of one product (rows with its product_id) all fall on the same side."""
    number: dict[str, int] = {}
    labels, product_of = [], []
    for row in rows:
        key = str(row.get("product_id", len(number)))
        if key not in number:
            number[key] = len(labels)
            labels.append(str(row.get(column, "")))
        product_of.append(number[key])
    _, held = holdout_rows(np.array(labels), fraction, seed)
    is_held = np.zeros(len(labels), bool)
    is_held[held] = True
    return ([r for r, p in zip(rows, product_of, strict=True) if not is_held[p]],
            [r for r, p in zip(rows, product_of, strict=True) if is_held[p]])

ITEM_COLUMNS = ("product_id", "name", "category", "image")  # an item's own fields; the rest is metadata but ...
INTERNAL_COLUMNS = ("sha256", "width", "height", "source_image", "source_sha256", "source_etag")  # ... these


def item_lines(catalog: pd.DataFrame) -> Iterator[str]:
    """One JSON line per product, in order of first appearance: its id, name, category, first image and thumbnail,
    every image (dense image id, path, thumbnail) and the rest of its first row as metadata."""
    import pandas as pd

    meta_columns = [c for c in catalog.columns if c not in ITEM_COLUMNS + INTERNAL_COLUMNS]
    codes, _ = pd.factorize(catalog["product_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1) if len(order) else []
    images, hashes = catalog["image"].tolist(), catalog["sha256"].tolist()
    firsts = catalog.iloc[[int(rows[0]) for rows in groups]]  # one take, then a cheap tuple per product
    for p, (rows, row) in enumerate(zip(groups, firsts.itertuples(index=False), strict=True)):
        values = dict(zip(catalog.columns, row, strict=True))
        item = {"id": p, **{c: values[c] for c in ITEM_COLUMNS}, "thumbnail": thumbnail_name(values["sha256"]),
                "images": [{"id": int(r), "image": images[r], "thumbnail": thumbnail_name(hashes[r])} for r in rows],
                "metadata": {c: values[c] for c in meta_columns if values[c] != ""}}
        yield json.dumps(item, ensure_ascii=False)
