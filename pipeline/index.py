"""Stage 4, index: Annoy index, item maps, extractor and manifest in a new folder, switched in atomically."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from pipeline.catalog.table import SOURCE_COLUMNS, load_catalog
from pipeline.common import cli
from pipeline.common.errors import StageError, require, user_input
from pipeline.common.locks import locked, remove_leftovers
from pipeline.indexing import deltas, duplicate_search, versions
from pipeline.indexing.annoy_tuning import TARGET_RECALL, K, choose_strategy, serving_cost, tune_search_k
from pipeline.indexing.inputs import check_shards, fingerprint
from pipeline.indexing.items import item_lines
from pipeline.indexing.thumbnails import build_thumbnails
from runtime import artifacts, storage
from runtime.duplicate_groups import check_threshold, write_groups
from runtime.embeddings import iter_shards
from runtime.layout import (
    DUPLICATES_FILE,
    EXTRACTOR_CONFIG,
    EXTRACTOR_DIR,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST,
    VECTORIZE_REJECTS_CSV,
    Layout,
)
from runtime.products import DEFAULT_SCORING, SCORINGS
from runtime.versions import KEEP_VERSIONS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

METRIC = "angular"
DEFAULT_TREES = 32  # recall follows search_k, not trees, from 25 to 100 trees (docs/index-choices.md)
ON_DISK_ABOVE = 200_000_000  # floats; larger indexes are built in their file, not in memory
DELTA_LIMIT = 0.02  # a larger change is a full build: added products cost every query a scan (docs/live-catalog.md)


def run(data_dir: Path, trees: int = DEFAULT_TREES, search_k: int | None = None,
        target_recall: float = TARGET_RECALL, keep: int = KEEP_VERSIONS, scoring: str = DEFAULT_SCORING,
        duplicate_threshold: float | None = None, delta_limit: float = DELTA_LIMIT, full: bool = False) -> dict:
    """Build a new index version from the embeddings and make it current, unless nothing changed.

    When less than `delta_limit` of the products changed since the full version being served (its base, if a
    delta is served) and that version was built with the same options and model, a delta version over it is
    written instead (`pipeline.indexing.deltas`): the removed and changed products' ids, and the new and changed ones'
    items, vectors and thumbnails. `full` (or a larger change) builds a full version, folding every delta in.

    Args:
        data_dir: the data directory; reads `catalog/`, `embeddings/`, `model/extractor/`; writes `index/`.
        trees: Annoy trees (more: better recall per search_k, larger file, slower build).
        search_k: nodes inspected per query; None measures the smallest reaching `target_recall`.
        target_recall: recall@10 against exact search that the measured search_k must reach.
        keep: index versions to keep (older ones are deleted).
        scoring: how a product's images' similarities make its score (max, mean or mix), for the service and
            evaluate.
        duplicate_threshold: near-duplicates' cosine similarity, for collapse=true; None calibrates it from the
            index (`pipeline.indexing.duplicate_search`).
        delta_limit: the largest changed share of the products written as a delta (0: always full).
        full: build a full version whatever changed.

    Returns:
        The manifest of the new version; or, when the current version was built from the same catalog,
        embeddings and options, its manifest with `unchanged: true` (no new version is written).

    Raises:
        StageError: no catalog, embeddings or extractor; embeddings that do not match the catalog or the
            extractor; a bad option; or another index run working in the same folder.
    """
    if scoring not in SCORINGS:
        raise StageError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if duplicate_threshold is not None:
        with user_input(ValueError):
            check_threshold(duplicate_threshold)
    layout = Layout(Path(data_dir))
    keys = load_catalog(layout, columns=("sha256",))["sha256"]  # the table itself is read after the Annoy build
    catalog_stat = _stat(layout.catalog_csv)
    embeddings_summary = storage.read_json(require(layout.embeddings_summary, "embeddings", "vectorize"))
    extractor_config = storage.read_json(require(layout.extractor / EXTRACTOR_CONFIG, "extractor", "finetune"))
    contents = check_shards(layout, keys, embeddings_summary, extractor_config["export_id"])
    del keys
    options = {"format_version": artifacts.FORMAT_VERSION, "trees": trees, "search_k": search_k,
               "target_recall": target_recall, "scoring": scoring, "duplicate_threshold": duplicate_threshold}
    inputs = fingerprint(layout, contents, options)
    with locked(layout.index, "index"):
        remove_leftovers(layout.index, (".tmp-*", ".current-*"))
        current = versions.current_manifest(layout)
        if current is not None and current.get("inputs") == inputs and not (full and current.get("delta")):
            log.info("index: the catalog, embeddings and options are those of version %s; index/current stays",
                     current["version"])
            return {**current, "unchanged": True}
        if current is not None and not full and delta_limit > 0:
            delta = deltas.index_delta(layout, layout.current_index.resolve(),
                                       lambda **kw: _catalog_again(layout, catalog_stat, **kw),
                                       embeddings_summary["rows"], embeddings_summary["dim"],
                                       extractor_config["export_id"], options, inputs, delta_limit, keep)
            if delta is not None:
                return delta
        with versions.staged(layout) as (version, now, staging):
            manifest = _build(layout, catalog_stat, staging, extractor_config, embeddings_summary, trees,
                              search_k, target_recall, scoring, duplicate_threshold)
            manifest.update(version=version, created_at=now.isoformat(), inputs=inputs, options=options,
                            lineage=versions.lineage(layout))
            storage.write_json(staging / MANIFEST, manifest)
        versions.make_current(layout, version, keep)
    log.info("index %s: %d items, %d trees, search_k %d, %.1f s", version, manifest["count"], trees,
             manifest["search_k"], manifest["build_seconds"])
    return manifest


def _build(layout: Layout, catalog_stat: tuple, staging: Path, extractor_config: dict, embeddings_summary: dict,
           trees: int, search_k: int | None, target_recall: float, scoring: str,
           duplicate_threshold: float | None) -> dict:
    """Write every file of a version into `staging`; return its manifest (without version and creation time).

    While Annoy builds and answers (its file is the memory that counts at 10M products), this holds a few integers
    per image; the catalog table is read once Annoy is unloaded (docs/performance-and-scale.md).
    """
    from annoy import AnnoyIndex

    started = time.perf_counter()
    n, dim = embeddings_summary["rows"] - embeddings_summary.get("unreadable", 0), embeddings_summary["dim"]
    index = AnnoyIndex(dim, METRIC)
    on_disk = n * dim > ON_DISK_ABOVE
    if on_disk:
        index.on_disk_build(str(staging / INDEX_FILE))
    readable = _add_vectors(index, layout.root, n, embeddings_summary["rows"])
    log.info("building %d trees over %d items on %d cores%s", trees, n, os.cpu_count() or 1,
             " (in the file: on_disk_build)" if on_disk else "")
    index.build(trees, n_jobs=-1)
    if not on_disk:
        index.save(str(staging / INDEX_FILE))
    storage.make_readable(staging / INDEX_FILE)
    vectors = artifacts.annoy_vectors(staging / INDEX_FILE, n, dim, index)  # the only copy of the vectors
    build_s = time.perf_counter() - started
    log.info("built in %.1f s; measuring search_k for recall@%d >= %s", build_s, K, target_recall)
    chosen, table = (search_k, []) if search_k else tune_search_k(index, vectors, trees, target=target_recall)
    cost = serving_cost(index, vectors, chosen) if table else None
    ids = _readable(_catalog_again(layout, catalog_stat, columns=("product_id",)), readable)["product_id"]
    product_of = ids.factorize(sort=False)[0]  # numbered by first appearance, as in items.jsonl
    del ids
    first, _, near = duplicate_search.find(duplicate_search.over_images(index, vectors, product_of),
                                             duplicate_threshold)
    groups = write_groups(first, staging / DUPLICATES_FILE)
    index.unload()
    del vectors
    catalog = _readable(_catalog_again(layout, catalog_stat, drop=SOURCE_COLUMNS), readable)  # not in items.jsonl
    images = dict(zip(catalog["sha256"], (layout.catalog / p for p in catalog["image"]), strict=True))
    build_thumbnails(images, layout.thumbs_cache, staging)
    with open(staging / ITEMS_FILE, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in item_lines(catalog))
    storage.link_tree(layout.extractor, staging / EXTRACTOR_DIR)
    return {
        "format_version": artifacts.FORMAT_VERSION,
        "encoder": extractor_config["encoder"], "encoder_fingerprint": extractor_config["encoder_fingerprint"],
        "export_id": extractor_config["export_id"], "finetuned": extractor_config.get("finetuned", False),
        "dim": dim, "metric": METRIC, "n_trees": trees, "search_k": chosen, "target_recall": target_recall,
        "search_k_measurements": table, "exact_ms_per_query": cost.exact_ms if cost else None,
        "annoy_ms_per_query": cost.annoy_ms if cost else None, "strategy": choose_strategy(cost),
        "rerank": "exact cosine with the vectors in index.ann",
        "count": n,
        "products": int(product_of.max() + 1) if n else 0, "scoring": scoring,
        "duplicate_threshold": near["threshold"], "duplicate_groups": groups, "near_duplicates": near,
        "unreadable_rows": int((~readable).sum()),
        "categories": int(catalog["category"].nunique()),
        "build_seconds": round(build_s, 2), "index_bytes": (staging / INDEX_FILE).stat().st_size,
        "build_peak_rss_mb": _peak_rss_mb(), "source": _catalog_source(layout),
        "files": artifacts.file_entries(staging),
    }


def _stat(path: Path) -> tuple:
    """What tells one catalog file from the next: acquire writes a new file and renames its folder into place."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _catalog_again(layout: Layout, catalog_stat: tuple, **columns: tuple[str, ...]) -> pd.DataFrame:
    """Read the catalog again for another part of the build, refusing one that acquire replaced meanwhile."""
    if not layout.catalog_csv.is_file() or _stat(layout.catalog_csv) != catalog_stat:
        raise StageError(f"{layout.catalog_csv} changed while the index was built (acquire ran); run index again")
    return load_catalog(layout, **columns)


def _readable(catalog: pd.DataFrame, readable: np.ndarray) -> pd.DataFrame:
    """The catalog rows whose images were embedded, renumbered: row i is image id i (no copy when all were)."""
    return catalog if readable.all() else catalog[readable].reset_index(drop=True)


def _add_vectors(index: Any, data_dir: Path, n: int, rows: int) -> np.ndarray:
    """Add the readable rows of every shard to the Annoy index as items 0..n-1, one shard at a time (Annoy's file
    then holds the only copy of the vectors); return the readable-row mask of the catalog's `rows`."""
    readable = np.ones(rows, bool)
    at = 0
    with tqdm(total=n, desc="index", unit="item", disable=None, mininterval=1.0) as bar:
        for start, vectors, ok in iter_shards(data_dir):
            readable[start:start + len(ok)] = ok
            if at + ok.sum() > n:
                break
            for vector in vectors[ok]:
                index.add_item(at, vector)
                at += 1
            bar.update(int(ok.sum()))
    if readable.sum() != n:  # a shard's `missing` disagrees with the summary: vectorize did not finish cleanly
        raise StageError(f"{Layout(Path(data_dir)).embeddings}: {int(readable.sum())} readable rows in the shards, "
                         f"{n} in embeddings.json; re-run vectorize")
    if len(readable) - readable.sum():
        log.warning("index: %d catalog row(s) left out: their images could not be read (catalog/%s)",
                    len(readable) - readable.sum(), VECTORIZE_REJECTS_CSV)
    return readable


def _catalog_source(layout: Layout) -> str | None:
    """The catalog source as the user gave it to acquire (no path of this machine is recorded otherwise)."""
    try:
        return storage.read_json(layout.catalog_summary).get("source")
    except (OSError, ValueError):
        return None


def _peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--trees", type=int, default=DEFAULT_TREES, help=f"Annoy trees (default {DEFAULT_TREES})")
    parser.add_argument("--search-k", type=int, default=None, help="fixed search_k (default: measured)")
    parser.add_argument("--target-recall", type=float, default=TARGET_RECALL,
                        help=f"recall@10 the measured search_k must reach (default {TARGET_RECALL})")
    parser.add_argument("--keep", type=int, default=KEEP_VERSIONS, help=f"index versions to keep ({KEEP_VERSIONS})")
    parser.add_argument("--scoring", choices=SCORINGS, default=DEFAULT_SCORING,
                        help=f"a product's score from its images' similarities (default {DEFAULT_SCORING})")
    parser.add_argument("--duplicate-threshold", type=cli.threshold, default=None, metavar="auto|T",
                        help="near-duplicates' cosine similarity, for collapse=true (default auto: calibrated on the "
                             "index, recorded in its manifest)")
    parser.add_argument("--delta-limit", type=float, default=DELTA_LIMIT, metavar="SHARE",
                        help=f"write a delta version when at most this share of the products changed since the full "
                             f"version served (default {DELTA_LIMIT}; 0: always a full build)")
    parser.add_argument("--full", action="store_true", help="build a full version, folding every delta in")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    m = summary
    if m.get("delta"):
        c = m.get("changes", {})
        return (f"index: a delta over full version {m['delta']['base']}: {c.get('removed', 0)} removed, "
                f"{c.get('added', 0)} added, {c.get('changed', 0)} changed ({100 * c.get('share', 0):.2f}% of the "
                f"products, within --delta-limit) in {c.get('seconds', '?')} s; {m['products']} products served -> "
                f"{Layout(options['data_dir']).index / m['version']}")
    if m.get("unchanged"):
        return (f"index: nothing changed since version {m['version']} (same catalog, embeddings and options): no new "
                f"version; index/current stays {Layout(options['data_dir']).index / m['version']}")
    measured = m["search_k_measurements"][-1] if m["search_k_measurements"] else {}
    return (f"index: {m['products']} products, {m['count']} images ({m['dim']}-d, {m['encoder']}), "
            f"{m['n_trees']} trees, search_k {m['search_k']} (recall@10 "
            f"{measured.get('recall_at_10', 'not measured')}; side by side {m.get('annoy_ms_per_query')} ms, exact "
            f"scan {m['exact_ms_per_query']} ms: serves by {m['strategy']}), {m['duplicate_groups']} near-duplicate "
            f"groups at {m['duplicate_threshold']}, built in {m['build_seconds']} s, index file "
            f"{m['index_bytes'] / 2**20:.1f} MiB, peak memory {m['build_peak_rss_mb']} MiB -> "
            f"{Layout(options['data_dir']).index / m['version']}")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.index --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
