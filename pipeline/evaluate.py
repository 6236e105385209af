"""Stage 5, evaluate: retrieval quality (precision, mAP, ANN recall) and query latency of an index, with pictures.

Results are products, as the service returns them: precision@k counts the k best products whose label matches.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.catalog.ingest import ingest, write_tables
from pipeline.catalog.sources import SOURCE_HELP, read_source
from pipeline.catalog.table import read_catalog
from pipeline.common import cli, plots
from pipeline.common.errors import StageError, user_input
from pipeline.indexing import deltas
from runtime import artifacts, storage
from runtime.extractor import Extractor, load_extractor
from runtime.items import flatten_items, read_items
from runtime.layout import EXTRACTOR_DIR, ITEMS_FILE, Layout, report_details, report_grid
from runtime.preprocess import decode_image
from runtime.products import CombinedSearch, Hit, ProductSearch

log = logging.getLogger(__name__)

GRID_QUERIES = 8
GRID_RESULTS = 5


def average_precision(relevant: list[bool], n_relevant: int, k: int) -> float:
    """AP@k: mean of precision@i over the ranks i <= k holding a relevant result, divided by min(k, n_relevant)."""
    hits, total = 0, 0.0
    for i, rel in enumerate(relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / i
    return total / min(k, n_relevant) if n_relevant else 0.0


def _label(item: dict, column: str) -> str:
    return str(item.get(column, item["metadata"].get(column, "")))


def run(data_dir: Path, queries: str, index: Path | None = None, label_column: str = "category", k: int = 10,
        report: Path | None = None, work_dir: Path | None = None) -> dict:
    """Query an index with every image of a source and measure what comes back.

    Args:
        data_dir: the data directory; reads its current index (unless `index` is given), writes `eval/`.
        queries: any acquire source (its images are verified and normalised like a catalog's).
        index: an index version folder, an `index/` folder or another data dir (default: `data_dir`'s).
        label_column: the column whose equality makes a result correct (a catalog column or metadata key).
        k: results per query.
        report: the JSON report to write (default `eval/report.json`; a `.details.json` and a `.png` grid of
            sample queries are written beside it).
        work_dir: where the query images are acquired to (default `eval/queries/`, a data dir of its own).

    Returns:
        The report: precision_at_1/5/10, map_at_10, ann_recall_at_10, n_queries, latency_ms_p50.

    Raises:
        StageError: no index, or one that fails verification; no usable query image, or a label column the queries
            lack.
    """
    layout = Layout(Path(data_dir))
    with user_input(artifacts.ArtifactError):
        served = artifacts.resolve_index(index or layout.root)
        served_manifest = artifacts.verify(served)
        folder, manifest = artifacts.base_of(served, served_manifest)  # a delta (`indexing.deltas`) is its base ...
    items = read_items(folder / ITEMS_FILE)
    gone = set(artifacts.read_removed(served, served_manifest))  # ... less the products it removed ...
    annoy = artifacts.load_annoy(folder, manifest, prefault=True)
    base = ProductSearch(artifacts.load_vectors(folder, manifest, annoy),
                         *flatten_items(items),
                         annoy, int(manifest["search_k"]),
                         int(manifest["n_trees"]), exact=False, scoring=manifest["scoring"],
                         removed=np.array([i for i, item in enumerate(items) if item["product_id"] in gone], int))
    added = deltas.read_added(served, served_manifest)  # ... and with the products it added, numbered after
    offset = len(items)
    search = CombinedSearch(base, ProductSearch(
        added.vectors, *flatten_items(added.items), None,
        scoring=manifest["scoring"]) if added.items else None)
    items += [{**item, "id": offset + i} for i, item in enumerate(added.items)]
    extractor = load_extractor(folder / EXTRACTOR_DIR)
    labels = np.array([_label(item, label_column) for item in items])
    report = Path(report or layout.report)
    work = Layout(Path(work_dir or layout.eval_queries))
    qcat, n_rejected = _acquire_queries(queries, work)
    if label_column not in qcat.columns:
        raise StageError(f"--label-column {label_column!r} is not a column of the queries; "
                         f"columns: {list(qcat.columns)}")
    qpaths = [str(work.catalog / p) for p in qcat["image"]]
    # A query that is itself in the index (same product id) must not count finding itself.
    number = {item["product_id"]: i for i, item in enumerate(items) if item["product_id"] not in gone or i >= offset}
    self_ids = np.array([number.get(q, -1) for q in qcat["product_id"]])
    hits, qvectors, latencies = _query(extractor, search, qpaths, k, self_ids)
    found = [[h.product for h in row] for row in hits]
    exact = [[h.product for h in search.search(v, k, exclude=s if s >= 0 else None, exact=True)]
             for v, s in zip(qvectors, self_ids, strict=True)]
    qlabels = qcat[label_column].to_numpy()
    result = _score(found, exact, labels, qlabels, self_ids)
    result["latency_ms_p50"] = round(1000 * float(np.median(latencies)), 3) if latencies else None
    storage.write_json(report, result)
    storage.write_json(report_details(report), {
        "index": str(served), "version": served_manifest["version"], "encoder": manifest["encoder"],
        "label_column": label_column, "k": k, "search_k": manifest["search_k"], "queries": queries,
        "strategy": manifest.get("strategy", "annoy"),
        "measured_path": "annoy, always: with strategy 'exact' the service scans instead, and its answers are "
                         "then exact (ann_recall_at_10 is what Annoy alone would give)",
        "latency_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 3) if latencies else None,
        "query_rows_rejected": n_rejected})
    thumbs = [[str((served if h.product >= offset else folder) / search_thumb(items[h.product], h.image))
               for h in row] for row in hits]
    _grid(report_grid(report), folder, thumbs, [[labels[i] for i in f] for f in found], qpaths, qlabels)
    log.info("evaluate: %s", result)
    return result


def _acquire_queries(queries: str, work: Layout) -> tuple[Any, int]:
    """Verify and normalise the query images into `work` like a catalog; return its table and the rejected count."""
    records, rejects = read_source(queries, work.cache)
    shutil.rmtree(work.catalog, ignore_errors=True)
    work.catalog.mkdir(parents=True)
    accepted, failed = ingest(records, work.catalog)
    write_tables(work.catalog, accepted, rejects + failed)
    if not accepted:
        raise StageError(f"none of the query images of {queries} could be used; see {work.rejects_csv}")
    return read_catalog(work.catalog_csv), len(rejects) + len(failed)


def _query(extractor: Extractor, search: CombinedSearch, paths: list[str], k: int, self_ids: np.ndarray
           ) -> tuple[list[list[Hit]], np.ndarray, list[float]]:
    """Embed and look up each query alone through Annoy, as the service would, timing decode + embedding + search."""
    found, vectors, latencies = [], [], []
    for path, own in tqdm(zip(paths, self_ids, strict=True), desc="evaluate", unit="query", disable=None,
                          total=len(paths)):
        started = time.perf_counter()
        vector = extractor.embed(decode_image(path, extractor.input_size)[None].numpy())[0]
        found.append(search.search(vector, k, exclude=int(own) if own >= 0 else None, exact=False))
        latencies.append(time.perf_counter() - started)
        vectors.append(vector)
    return found, np.array(vectors, dtype=np.float32).reshape(len(paths), -1), latencies


def search_thumb(item: dict, image: int) -> str:
    """The thumbnail of the product image that matched."""
    return next(i["thumbnail"] for i in item["images"] if i["id"] == image)


def _score(found: list[list[int]], exact: list[list[int]], labels: np.ndarray, qlabels: np.ndarray,
           self_ids: np.ndarray) -> dict:
    """Precision@1/5/10, mAP@10 over the products found, and the ANN's recall@10 against exact search."""
    n_label = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    rel = [[bool(labels[i] == q) for i in f] for f, q in zip(found, qlabels, strict=True)]
    n_relevant = [int(n_label.get(q, 0)) - int(s >= 0) for q, s in zip(qlabels, self_ids, strict=True)]
    return {
        "precision_at_1": _mean([sum(r[:1]) / 1 for r in rel]),
        "precision_at_5": _mean([sum(r[:5]) / 5 for r in rel]),
        "precision_at_10": _mean([sum(r[:10]) / 10 for r in rel]),
        "map_at_10": _mean([average_precision(r, n, 10) for r, n in zip(rel, n_relevant, strict=True)]),
        "ann_recall_at_10": _mean([len(set(f[:10]) & set(e[:10])) / min(10, len(e))
                                   for f, e in zip(found, exact, strict=True) if e]),
        "n_queries": len(found),
    }


def _grid(path: Path, folder: Path, thumbs: list[list[str]], found_labels: list[list[str]], qpaths: list[str],
          qlabels: np.ndarray) -> None:
    """Draw a few random queries with their top products (the image that matched), framed by correctness."""
    rows = []
    for q in np.random.default_rng(0).permutation(len(qpaths))[:GRID_QUERIES]:
        results = [(str(folder / t), str(label), bool(label == qlabels[q]))
                   for t, label in zip(thumbs[q][:GRID_RESULTS], found_labels[q][:GRID_RESULTS], strict=True)]
        rows.append(((qpaths[q], str(qlabels[q])), results))
    plots.results_grid(rows, path)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the data directory: its current index is evaluated and eval/ receives the report")
    parser.add_argument("--queries", required=True, help=f"query images, any acquire source: {SOURCE_HELP}")
    parser.add_argument("--index", type=Path, default=None,
                        help="another index folder to evaluate (default: DATA_DIR/index/current)")
    parser.add_argument("--label-column", default="category", help="column a correct result shares with its query")
    parser.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--report", type=Path, default=None, help="report JSON (default DATA_DIR/eval/report.json)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the query images are acquired to (default DATA_DIR/eval/queries)")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    r = summary
    report = options.get("report") or Layout(options["data_dir"]).report
    return (f"evaluate: {r['n_queries']} queries, precision@1 {r['precision_at_1']}, @5 {r['precision_at_5']}, "
            f"@10 {r['precision_at_10']}, mAP@10 {r['map_at_10']}, ANN recall@10 {r['ann_recall_at_10']}, "
            f"p50 latency {r['latency_ms_p50']} ms -> {report} (+ {report_grid(report).name})")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.evaluate --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
