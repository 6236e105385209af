"""The acquired catalog as the later stages read it (`catalog/catalog.csv`), and the stratified split that acquire
and finetune share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.common.errors import StageError, require
from runtime.layout import Layout

if TYPE_CHECKING:  # pandas is imported when a catalog is read, not by `--help`
    import pandas as pd


SOURCE_COLUMNS = ("width", "height", "source_image", "source_sha256", "source_etag")  # acquire's own bookkeeping


def read_catalog(path: Path, drop: tuple[str, ...] = (), columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a catalog CSV as text (product ids such as 00123 stay as written): every column but those in `drop`,
    or only `columns`."""
    import pandas as pd

    def wanted(column: str) -> bool:
        return column not in drop and (columns is None or column in columns)

    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=wanted)


def load_catalog(layout: Layout, drop: tuple[str, ...] = (), columns: tuple[str, ...] | None = None
                 ) -> pd.DataFrame:
    """Read the acquired catalog (as `read_catalog`), with a clear error when acquire has not run or accepted
    nothing."""
    catalog = read_catalog(require(layout.catalog_csv, "catalog", "acquire"), drop, columns)
    if catalog.empty:
        raise StageError(f"{layout.catalog_csv} has no products: every row was rejected (see rejects.csv)")
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
        raise StageError(f"holdout fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(codes, kind="stable")  # rows of each label together, ascending within it
    held = []
    for members in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        n = round(len(members) * fraction) if len(members) > 1 else 0
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
