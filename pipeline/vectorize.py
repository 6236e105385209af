"""Stage 3, vectorize: unit-vector embeddings of every catalog row, in catalog order, in resumable shards."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.common import cli
from pipeline.common.errors import StageError
from pipeline.features.compute import BATCH_SIZE
from pipeline.vectorizing import local_engine

log = logging.getLogger(__name__)

SHARD_ROWS = 1024
ENGINES = ("local", "spark")


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
        engine: `local` (this process, `pipeline.vectorizing.local_engine`) or `spark` (one Spark task per shard,
            `pipeline.vectorizing.spark_engine`).
        spark_master: the Spark master with engine spark (`local[2]`, `yarn`, `spark://host:7077`); None takes
            spark-submit's or `local[*]`.

    Returns:
        The summary written to `embeddings/embeddings.json`.

    Raises:
        StageError: an unknown engine, an s3:// data dir with the local engine, no catalog or no extractor.
    """
    if engine == "spark":
        from pipeline.vectorizing import spark_engine  # pyspark is imported only when Spark runs

        return spark_engine.run(str(data_dir), shard_rows, batch_size, spark_master)
    if engine != "local":
        raise StageError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if str(data_dir).startswith("s3:"):
        raise StageError("an s3:// data dir needs --engine spark (the local engine reads a local folder)")
    return local_engine.run(Path(data_dir), shard_rows, batch_size)


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
