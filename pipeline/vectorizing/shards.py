"""Embedding shards, the work both vectorize engines share: plan them, embed one, and sum up a run."""

from __future__ import annotations

import csv
import logging
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.features.cache import FeatureCache
from pipeline.features.compute import BATCH_SIZE, compute_missing
from runtime import embeddings, storage
from runtime.extractor import Extractor
from runtime.layout import SHARD_FILES, Layout

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REJECT_COLUMNS = ("row", "product_id", "image", "sha256", "reason")


def embed_shard(extractor: Extractor, cache: FeatureCache, stamp: dict, keys: list[str], paths: list[str],
                batch_size: int = BATCH_SIZE, bar: tqdm | None = None) -> tuple[np.ndarray, dict, int]:
    """Embed one shard's rows: the backbone on images not cached yet, the head on every readable row.

    The one function both engines run, so their shards are the same bytes. An image that cannot be read
    is a NaN row, listed in the returned stamp's `missing` with the reason, and the shard goes on.

    Returns:
        (vectors [rows, dim], the stamp with `missing` filled in, backbone passes run).
    """
    computed, failed = compute_missing(cache, keys, paths, extractor.features, batch_size, bar,
                                        extractor.input_size)
    readable = np.array([k not in failed for k in keys], bool)
    vectors = np.full((len(keys), extractor.dim), np.nan, np.float32)
    if readable.any():
        vectors[readable] = extractor.head(cache.get([k for k, ok in zip(keys, readable, strict=True) if ok]))
    start = stamp["rows"][0]
    missing = [{"row": int(start + j), "reason": failed[keys[j]]} for j in np.flatnonzero(~readable)]
    return vectors, {**stamp, "missing": missing}, computed


def plan(layout: Layout, keys: list[str], export_id: str, shard_rows: int) -> list[dict]:
    """Return the stamp of every shard the catalog needs, in order."""
    return [embeddings.shard_stamp(i, start, keys[start:start + shard_rows], export_id)
            for i, start in enumerate(range(0, len(keys), shard_rows))]


def finish(layout: Layout, catalog: pd.DataFrame, extractor_config: dict, n_shards: int, shard_rows: int, kept: int,
           computed: int, seconds: float, engine: str) -> dict:
    """Delete shards past the catalog's end, write the unreadable images' report and the summary."""
    for stale in sorted(layout.embeddings.glob(SHARD_FILES)):
        if embeddings.shard_number(stale.name) >= n_shards:
            stale.unlink()
    missing = [m for i in range(n_shards) for m in storage.read_json(layout.shard_stamp(i)).get("missing", [])]
    rejects = [{"row": m["row"], "product_id": catalog["product_id"].iat[m["row"]],
                "image": catalog["image"].iat[m["row"]], "sha256": catalog["sha256"].iat[m["row"]],
                "reason": m["reason"]} for m in missing]
    with open(layout.vectorize_rejects_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, REJECT_COLUMNS)
        writer.writeheader()
        writer.writerows(rejects)
    if rejects:
        log.warning("vectorize: %d image(s) could not be read; skipped, listed in %s", len(rejects),
                    layout.vectorize_rejects_csv)
    summary = {"rows": len(catalog), "dim": int(extractor_config["dim"]), "shards": n_shards,
               "shard_rows": shard_rows, "shards_kept": kept, "backbone_images_computed": computed,
               "unreadable": len(rejects), "export_id": extractor_config["export_id"],
               "encoder": extractor_config["encoder"], "engine": engine, "seconds": round(seconds, 3),
               "images_per_s": round(computed / seconds, 1) if computed else None}
    storage.write_json(layout.embeddings_summary, summary)
    log.info("vectorize: %s", summary)
    return summary
