"""Stage 1, acquire: read a catalog source, verify and normalise every image, categorise, report rejects."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from pipeline.catalog.ingest import ingest, merge_products, previous_results, reason_kind, write_tables
from pipeline.catalog.sources import SOURCE_HELP, read_source
from pipeline.catalog.table import holdout_split
from pipeline.common import cli
from pipeline.common.locks import locked, remove_leftovers
from runtime import imaging, storage
from runtime.layout import CATALOG_SUMMARY, Layout

log = logging.getLogger(__name__)


def run(source: str, data_dir: Path, category_column: str | None = None, max_side: int = imaging.MAX_SIDE,
        max_pixels: int = imaging.MAX_PIXELS, workers: int | None = None, holdout: float = 0.0,
        holdout_column: str = "category", seed: int = 0) -> dict:
    """Acquire a catalog: every input row ends up accepted in catalog.csv or explained in rejects.csv.

    Args:
        source: a source spec (see `pipeline.catalog.sources.read_source`).
        data_dir: the data directory; writes `catalog/` (replaced atomically when complete).
        category_column: the metadata column that names the category (fashion default: articleType).
        max_side: longer side of the normalised JPEGs.
        max_pixels: pixel count above which an image is refused as a decompression bomb.
        workers: decoding processes (default: one per core).
        holdout: fraction of the accepted products written to queries.csv instead of catalog.csv.
        holdout_column: the catalog column the held-out split is stratified on.
        seed: random seed of the held-out split.

    Returns:
        The summary written to `catalog/summary.json`.

    Raises:
        SourceError: the source cannot be read at all (a StageError).
        StageError: another acquire run holds the data dir's lock.
    """
    layout = Layout(Path(data_dir))
    with locked(layout.root, "acquire"):
        storage.undo_interrupted_swap(layout.catalog)  # before the leftovers go: it may be the only catalog
        remove_leftovers(layout.root, (f".{layout.catalog.name}.tmp-*", f".{layout.catalog.name}.old-*"))
        staging = layout.root / f".{layout.catalog.name}.tmp-{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            summary = _acquire(source, layout, staging, category_column, max_side, max_pixels, workers, holdout,
                               holdout_column, seed)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        storage.swap_in(staging, layout.catalog)
    log.info("acquire: %s", summary)
    return summary


def _acquire(source: str, layout: Layout, staging: Path, category_column: str | None, max_side: int,
             max_pixels: int, workers: int | None, holdout: float, holdout_column: str, seed: int) -> dict:
    """Read the source and write the whole new catalog folder into `staging`; return its summary."""
    records, rejects = read_source(source, layout.cache, category_column)
    records, repeated, conflicts = merge_products(records)
    rejects += repeated
    n_input = len(records) + len(rejects)
    log.info("%s: %d rows, %d rejected before decoding", source, n_input, len(rejects))
    settings = {"max_side": max_side, "max_pixels": max_pixels}
    counts: dict[str, int] = {}
    accepted, failed = ingest(records, staging, max_side, max_pixels, workers,
                              previous_results(layout.catalog, settings), counts)
    rejects += failed
    queries: list[dict] = []
    if holdout:
        accepted, queries = holdout_split(accepted, holdout, holdout_column, seed)
    assert len(accepted) + len(queries) + len(rejects) == n_input, "a row was lost between source and catalog"
    write_tables(staging, accepted, rejects, queries, conflicts)
    reasons = Counter(reason_kind(r.reason) for r in rejects)
    summary = {
        "source": source, "input_rows": n_input, "accepted": len(accepted), "held_out": len(queries),
        "rejected": len(rejects), "products": len({r["product_id"] for r in accepted}),
        "held_out_products": len({r["product_id"] for r in queries}), "metadata_conflicts": len(conflicts),
        "duplicates": sum(1 for r in accepted + queries if r["duplicate_of"]),
        "categories": len({r["category"] for r in accepted}), "reject_reasons": dict(reasons.most_common()),
        "decoded": counts["decoded"], "kept": counts["kept"], "normalise": settings,
    }
    storage.write_json(staging / CATALOG_SUMMARY, summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--source", required=True, help=SOURCE_HELP)
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--category-column", default=None,
                        help="metadata column naming the category (fashion: articleType; csv: category)")
    parser.add_argument("--max-side", type=int, default=imaging.MAX_SIDE, help="longer side of stored JPEGs")
    parser.add_argument("--max-pixels", type=int, default=imaging.MAX_PIXELS, help="decompression-bomb limit")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    parser.add_argument("--holdout", type=float, default=0.0, help="fraction held out as queries.csv")
    parser.add_argument("--holdout-column", default="category", help="column the held-out split is stratified on")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the held-out split")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    lines = [f"acquire: {summary['input_rows']} images -> {summary['accepted']} accepted "
             f"({summary['products']} products), {summary['held_out']} held out as queries, "
             f"{summary['rejected']} rejected, {summary['duplicates']} exact duplicates flagged",
             f"  decoded: {summary['decoded']}; kept from the last run (source bytes unchanged): {summary['kept']}"]
    lines += [f"  rejected: {count:6d}  {reason}" for reason, count in summary["reject_reasons"].items()]
    lines.append(f"  details: {Layout(options['data_dir']).rejects_csv}")
    if summary["metadata_conflicts"]:
        lines.append(f"  {summary['metadata_conflicts']} product metadata values differed between a product's rows "
                     f"(the first row's kept): {Layout(options['data_dir']).conflicts_csv}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.acquire --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
