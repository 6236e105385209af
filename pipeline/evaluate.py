"""Stage 5, evaluate: retrieval quality (precision, mAP, ANN recall) and query latency of an index, with pictures."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import artifacts, storage
from pipeline.index import exact_top_k
from pipeline.layout import Layout, read_catalog

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


def run(index: Path, queries: str, label_column: str = "category", k: int = 10, report: Path | None = None,
        work_dir: Path | None = None) -> dict:
    """Query an index with every image of a source and measure what comes back.

    Args:
        index: an index version folder, an `index/` folder or a data dir.
        queries: any acquire source (its images are verified and normalised like a catalog's).
        label_column: the column whose equality makes a result correct (a catalog column or metadata key).
        k: results per query.
        report: the JSON report to write (a `.details.json` and a `.png` grid are written beside it).
        work_dir: where the queries are acquired to (default: a temporary folder).

    Returns:
        The report: precision_at_1/5/10, map_at_10, ann_recall_at_10, n_queries, latency_ms_p50.
    """
    from pipeline import acquire
    from pipeline.extractor import load_extractor

    folder = artifacts.resolve_index(index)
    manifest = artifacts.verify(folder)
    annoy_index = artifacts.load_annoy(folder, manifest, prefault=True)
    items = artifacts.read_items(folder)
    extractor = load_extractor(folder / artifacts.EXTRACTOR_DIR)
    labels = np.array([_label(item, label_column) for item in items])
    report = Path(report or "eval/report.json")
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(work_dir or tmp))
        acquire.run(queries, layout.root, holdout=0.0)
        qcat = read_catalog(layout.catalog_csv)
        if qcat.empty:
            raise ValueError(f"none of the query images of {queries} could be used; see {layout.rejects_csv}")
        if label_column not in qcat.columns:
            raise ValueError(f"--label-column {label_column!r} is not a column of the queries; "
                             f"columns: {list(qcat.columns)}")
        qpaths = [str(layout.catalog / p) for p in qcat["image"]]
        found, qvectors, latencies = _query(extractor, annoy_index, qpaths, k + 1, manifest["search_k"])
        # A query that is itself in the index must not count finding itself.
        self_ids = np.array([next((i for i in f if items[i]["product_id"] == q), -1)
                             for f, q in zip(found, qcat["product_id"], strict=True)])
        found = [[i for i in f if i != s][:k] for f, s in zip(found, self_ids, strict=True)]
        vectors = np.load(folder / artifacts.VECTORS_FILE, mmap_mode="r")
        exact = exact_top_k(vectors, qvectors, k, exclude=self_ids)
        qlabels = qcat[label_column].to_numpy()
        result = _score(found, exact, labels, qlabels, self_ids)
        result["latency_ms_p50"] = round(1000 * float(np.median(latencies)), 3) if latencies else None
        storage.write_json(report, result)
        storage.write_json(report.with_suffix(".details.json"), {
            "index": str(folder), "version": manifest["version"], "encoder": manifest["encoder"],
            "label_column": label_column, "k": k, "search_k": manifest["search_k"], "queries": queries,
            "strategy": manifest.get("strategy", "annoy"),
            "measured_path": "annoy, always: with strategy 'exact' the service scans instead, and its answers are "
                             "then exact (ann_recall_at_10 is what Annoy alone would give)",
            "latency_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 3) if latencies else None,
            "query_rows_rejected": len(read_catalog(layout.rejects_csv))})
        _grid(report.with_suffix(".png"), folder, items, labels, qpaths, qlabels, found)
    log.info("evaluate: %s", result)
    return result


def _query(extractor, annoy_index, paths: list[str], n: int, search_k: int) -> tuple[list, np.ndarray, list]:
    """Embed and look up each query alone, as the service would, timing decode + embedding + lookup."""
    from pipeline.features import decode_image

    found, vectors, latencies = [], [], []
    for path in tqdm(paths, desc="evaluate", unit="query", disable=None):
        started = time.perf_counter()
        vector = extractor.embed(decode_image(path)[None].numpy())[0]
        found.append(annoy_index.get_nns_by_vector(vector, n, search_k=search_k))
        latencies.append(time.perf_counter() - started)
        vectors.append(vector)
    return found, np.array(vectors, dtype=np.float32).reshape(len(paths), -1), latencies


def _score(found: list[list[int]], exact: np.ndarray, labels: np.ndarray, qlabels: np.ndarray,
           self_ids: np.ndarray) -> dict:
    """Precision@1/5/10, mAP@10 and the ANN's recall@10 against exact search."""
    n_label = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    rel = [[bool(labels[i] == q) for i in f] for f, q in zip(found, qlabels, strict=True)]
    n_relevant = [int(n_label.get(q, 0)) - int(s >= 0) for q, s in zip(qlabels, self_ids, strict=True)]
    return {
        "precision_at_1": _mean([sum(r[:1]) / 1 for r in rel]),
        "precision_at_5": _mean([sum(r[:5]) / 5 for r in rel]),
        "precision_at_10": _mean([sum(r[:10]) / 10 for r in rel]),
        "map_at_10": _mean([average_precision(r, n, 10) for r, n in zip(rel, n_relevant, strict=True)]),
        "ann_recall_at_10": _mean([len(set(f[:10]) & set(e[:10].tolist())) / min(10, len(e))
                                   for f, e in zip(found, exact, strict=True)]),
        "n_queries": len(found),
    }


def _grid(path: Path, folder: Path, items: list[dict], labels: np.ndarray, qpaths: list[str],
          qlabels: np.ndarray, found: list[list[int]]) -> None:
    """Draw a few random queries with their top results, framed by correctness."""
    from pipeline import plots

    rows = []
    for q in np.random.default_rng(0).permutation(len(qpaths))[:GRID_QUERIES]:
        results = [(str(folder / items[i]["thumbnail"]), str(labels[i]), bool(labels[i] == qlabels[q]))
                   for i in found[q][:GRID_RESULTS]]
        rows.append(((qpaths[q], str(qlabels[q])), results))
    plots.results_grid(rows, path)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser."""
    parser.add_argument("--index", type=Path, default=None, help="index folder (default: DATA_DIR/index/current)")
    parser.add_argument("--queries", required=True, help="query images: any acquire source")
    parser.add_argument("--label-column", default="category", help="column a correct result shares with its query")
    parser.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--report", type=Path, default=None, help="report JSON (default DATA_DIR/eval/report.json)")


def main(args: argparse.Namespace) -> None:
    """Run the stage from parsed CLI arguments."""
    if args.index is None and args.data_dir is None:
        raise ValueError("give --index DIR (or --data-dir DIR to use its current index)")
    report = args.report or (Layout(args.data_dir).eval / "report.json" if args.data_dir else None)
    work = Layout(args.data_dir).eval / "queries" if args.data_dir else None
    r = run(args.index or args.data_dir, args.queries, args.label_column, args.k, report, work)
    print(f"evaluate: {r['n_queries']} queries, precision@1 {r['precision_at_1']}, @5 {r['precision_at_5']}, "
          f"@10 {r['precision_at_10']}, mAP@10 {r['map_at_10']}, ANN recall@10 {r['ann_recall_at_10']}, "
          f"p50 latency {r['latency_ms_p50']} ms -> {report or 'eval/report.json'}")
