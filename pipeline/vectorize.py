"""Stage 3, vectorize: unit-vector embeddings of every catalog row, in catalog order, in resumable shards."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pipeline import cli
from pipeline.catalog import catalog_inputs
from pipeline.features import BATCH_SIZE, FeatureCache, compute_missing
from runtime import embeddings, storage
from runtime.extractor import load_extractor
from runtime.layout import SHARD_FILES, Layout

log = logging.getLogger(__name__)

SHARD_ROWS = 1024


def run(data_dir: Path, shard_rows: int = SHARD_ROWS, batch_size: int = BATCH_SIZE) -> dict:
    """Embed the catalog with the exported extractor; resume after a kill, re-embed only what changed.

    Each shard of `shard_rows` catalog rows is written as `part-NNNNN.npy` plus a `.json` stamp naming its
    content (image hashes and extractor export id). A shard whose stamp matches is kept as it is; for the
    others the backbone runs only on images missing from the feature cache (new products), and the head
    (cheap) runs on the cached features.

    Args:
        data_dir: the data directory; reads `catalog/` and `model/extractor/`, writes `embeddings/`.
        shard_rows: catalog rows per shard.
        batch_size: images per backbone call.

    Returns:
        The summary written to `embeddings/embeddings.json`.
    """
    layout = Layout(Path(data_dir))
    _, keys, paths = catalog_inputs(layout)
    extractor = load_extractor(layout.extractor)
    export_id = extractor.export_id
    cache = FeatureCache(layout.features(extractor.fingerprint))
    layout.embeddings.mkdir(parents=True, exist_ok=True)
    n_shards = (len(keys) + shard_rows - 1) // shard_rows
    started = time.perf_counter()
    kept = computed = 0
    with tqdm(total=cache.count_missing(keys), desc="vectorize", unit="img", disable=None) as bar:
        for i in range(n_shards):
            rows = slice(i * shard_rows, (i + 1) * shard_rows)
            stamp = embeddings.shard_stamp(i, rows.start, keys[rows], export_id)
            if embeddings.is_current(layout, i, stamp):
                kept += 1
                continue
            computed += compute_missing(cache, keys[rows], paths[rows], extractor.features, batch_size, bar)
            embeddings.write_shard(layout, i, extractor.head(cache.get(keys[rows])), stamp)
    for stale in sorted(layout.embeddings.glob(SHARD_FILES)):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    seconds = time.perf_counter() - started
    summary = {"rows": len(keys), "dim": extractor.dim, "shards": n_shards, "shard_rows": shard_rows,
               "shards_kept": kept, "backbone_images_computed": computed, "export_id": export_id,
               "encoder": extractor.config["encoder"], "seconds": round(seconds, 3),
               "images_per_s": round(computed / seconds, 1) if computed else None}
    storage.write_json(layout.embeddings_summary, summary)
    log.info("vectorize: %s", summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help=f"catalog rows per shard ({SHARD_ROWS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per backbone call ({BATCH_SIZE})")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    rate = f" at {summary['images_per_s']} img/s" if summary["images_per_s"] else ""
    return (f"vectorize: {summary['rows']} embeddings ({summary['dim']}-d) in {summary['shards']} shards, "
            f"{summary['shards_kept']} kept from an earlier run, {summary['backbone_images_computed']} images "
            f"through the backbone{rate}")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.vectorize --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
