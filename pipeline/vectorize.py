"""Stage 3, vectorize: unit-vector embeddings of every catalog row, in catalog order, in resumable shards."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline import cli
from pipeline.catalog import catalog_inputs
from pipeline.feature_cache import FeatureCache
from pipeline.features import BATCH_SIZE, compute_missing
from runtime import embeddings, storage
from runtime.extractor import Extractor, load_extractor
from runtime.layout import SHARD_FILES, Layout

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SHARD_ROWS = 1024
ENGINES = ("local", "spark")
REJECT_COLUMNS = ("row", "product_id", "image", "sha256", "reason")


def embed_shard(extractor: Extractor, cache: FeatureCache, stamp: dict, keys: list[str], paths: list[str],
                batch_size: int = BATCH_SIZE, bar: tqdm | None = None) -> tuple[np.ndarray, dict, int]:
    """Embed one shard's rows: the backbone on images not cached yet, the head on every readable row.

    The one function both engines run, so their shards are the same bytes. An image that cannot be read
    is a NaN row, listed in the returned stamp's `missing` with the reason, and the shard goes on.

    Returns:
        (vectors [rows, dim], the stamp with `missing` filled in, backbone passes run).
    """
    computed, failed = compute_missing(cache, keys, paths, extractor.features, batch_size, bar)
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


def run(data_dir: Path, shard_rows: int = SHARD_ROWS, batch_size: int = BATCH_SIZE, engine: str = "local",
        spark_master: str | None = None) -> dict:
    """Embed the catalog with the exported extractor; resume after a kill, re-embed only what changed.

    Each shard of `shard_rows` catalog rows is written as `part-NNNNN.npy` plus a `.json` stamp naming its
    content (image hashes and extractor export id). A shard whose stamp matches is kept as it is; for the
    others the backbone runs only on images missing from the feature cache (new products), and the head
    (cheap) runs on the cached features. An image that cannot be read is skipped and recorded in
    `catalog/vectorize_rejects.csv` (row, product id, reason); the index leaves its row out.

    Args:
        data_dir: the data directory (local, or `s3://bucket/prefix` with engine spark); reads `catalog/` and
            `model/extractor/`, writes `embeddings/` and `catalog/vectorize_rejects.csv`.
        shard_rows: catalog rows per shard.
        batch_size: images per backbone call.
        engine: `local` (this process) or `spark` (one Spark task per shard; see `pipeline.spark_vectorize`).
        spark_master: the Spark master with engine spark (`local[2]`, `yarn`, `spark://host:7077`); None takes
            spark-submit's or `local[*]`.

    Returns:
        The summary written to `embeddings/embeddings.json`.

    Raises:
        ValueError: an unknown engine, or an s3:// data dir with the local engine.
    """
    if engine == "spark":
        from pipeline import spark_vectorize

        return spark_vectorize.run(str(data_dir), shard_rows, batch_size, spark_master)
    elif engine != "local":
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if str(data_dir).startswith("s3:"):
        raise ValueError("an s3:// data dir needs --engine spark (the local engine reads a local folder)")
    layout = Layout(Path(data_dir))
    catalog, keys, paths = catalog_inputs(layout)
    extractor = load_extractor(layout.extractor)
    cache = FeatureCache(layout.features(extractor.fingerprint))
    stamps = plan(layout, keys, extractor.export_id, shard_rows)
    layout.embeddings.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kept = computed = 0
    with tqdm(total=cache.count_missing(keys), desc="vectorize", unit="img", disable=None) as bar:
        for i, stamp in enumerate(stamps):
            if embeddings.is_current(layout, i, stamp):
                kept += 1
                continue
            rows = slice(*stamp["rows"])
            vectors, stamp, done = embed_shard(extractor, cache, stamp, keys[rows], paths[rows], batch_size, bar)
            embeddings.write_shard(layout, i, vectors, stamp)
            computed += done
    return finish(layout, catalog, extractor.config, len(stamps), shard_rows, kept, computed,
                  time.perf_counter() - started, "local")


def finish(layout: Layout, catalog: pd.DataFrame, extractor_config: dict, n_shards: int, shard_rows: int, kept: int,
           computed: int, seconds: float, engine: str) -> dict:
    """Delete shards past the catalog's end, write the unreadable images' report and the summary."""
    for stale in sorted(layout.embeddings.glob(SHARD_FILES)):
        if int(stale.stem.split("-")[1]) >= n_shards:
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




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", required=True,
                        help="the data directory (see data/README.md); s3://bucket/prefix with --engine spark")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help=f"catalog rows per shard ({SHARD_ROWS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per backbone call ({BATCH_SIZE})")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local (this process, default) or spark (one Spark task per shard)")
    parser.add_argument("--spark-master", default=None,
                        help="with --engine spark: local[2] | yarn | spark://HOST:7077 (default: spark-submit's)")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    rate = f" at {summary['images_per_s']} img/s" if summary["images_per_s"] else ""
    return (f"vectorize: {summary['rows']} embeddings ({summary['dim']}-d) in {summary['shards']} shards, "
            f"{summary['shards_kept']} kept from an earlier run, {summary['backbone_images_computed']} images "
            f"through the backbone{rate}" + (f"; {summary['unreadable']} unreadable image(s) skipped, see "
                                             "catalog/vectorize_rejects.csv" if summary.get("unreadable") else ""))


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.vectorize --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
