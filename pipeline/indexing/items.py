"""The catalog as an index version's `items.jsonl`: one JSON line per product, its images by dense image id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.table import SOURCE_COLUMNS
from runtime.layout import thumbnail_name

if TYPE_CHECKING:  # pandas is imported when a catalog is read, not by `--help`
    import pandas as pd

ITEM_COLUMNS = ("product_id", "name", "category", "image")  # an item's own fields; the rest is metadata but ...
INTERNAL_COLUMNS = ("sha256", *SOURCE_COLUMNS)  # ... these


ITEM_CHUNK = 65_536  # products whose rows are taken from the table at once: memory stays flat as catalogs grow


def item_lines(catalog: pd.DataFrame) -> Iterator[str]:
    """One JSON line per product, in order of first appearance: its id, name, category, first image and thumbnail,
    every image (dense image id, path, thumbnail) and the rest of its first row as metadata.

    Products are taken `ITEM_CHUNK` at a time, so what this holds besides the table is a few integers per row.
    """
    import pandas as pd

    meta_columns = [c for c in catalog.columns if c not in ITEM_COLUMNS + INTERNAL_COLUMNS]
    codes, _ = pd.factorize(catalog["product_id"], sort=False)
    order = np.argsort(codes, kind="stable")  # rows product after product, in catalog order within each
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(order)]]) if len(order) else [0]
    for first in range(0, len(starts) - 1, ITEM_CHUNK):
        bounds = starts[first:first + ITEM_CHUNK + 1]
        rows = order[bounds[0]:bounds[-1]]
        images, hashes = catalog["image"].iloc[rows].tolist(), catalog["sha256"].iloc[rows].tolist()
        heads = catalog.iloc[rows[bounds[:-1] - bounds[0]]]  # one take, then a cheap tuple per product
        for p, row in enumerate(heads.itertuples(index=False), start=first):
            values = dict(zip(catalog.columns, row, strict=True))
            at = range(bounds[p - first] - bounds[0], bounds[p - first + 1] - bounds[0])
            item = {"id": p, **{c: values[c] for c in ITEM_COLUMNS}, "thumbnail": thumbnail_name(values["sha256"]),
                    "images": [{"id": int(rows[i]), "image": images[i], "thumbnail": thumbnail_name(hashes[i])}
                               for i in at],
                    "metadata": {c: values[c] for c in meta_columns if values[c] != ""}}
            yield json.dumps(item, ensure_ascii=False)
