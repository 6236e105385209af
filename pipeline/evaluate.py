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
    from pipeline import acquire, plots
    from pipeline.extractor import load_extractor
    from pipeline.features import decode_image

    folder = artifacts.resolve_index(index)
    manifest = artifacts.verify(folder)
    annoy_index = artifacts.load_annoy(folder, manifest, prefault=True)
    items = artifacts.read_items(folder)
    extractor = load_extractor(folder / artifacts.EXTRACTOR_DIR)
    vectors = np.array([annoy_index.get_item_vector(i) for i in range(len(items))], dtype=np.float32)
    labels = np.array([_label(item, label_column) for item in items])
    with tempfile.TemporaryDirectory() as tmp:
        qdir = Path(work_dir or tmp)
        acquire.run(queries, qdir, holdout=0.0)
        layout = Layout(qdir)
        qcat = read_catalog(layout.catalog_csv)
        if label_column not in qcat.columns:
            raise ValueError(f"--label-column {label_column!r} is not a column of the queries; "
                             f"columns: {list(qcat.columns)}")
        qpaths = [str(layout.catalog / p) for p in qcat["image"]]
        found, latencies, qvectors = [], [], []
        for path in tqdm(qpaths, desc="evaluate", unit="query", disable=None):
            started = time.perf_counter()
            vector = extractor.embed(decode_image(path)[None].numpy())[0]
            ids = annoy_index.get_nns_by_vector(vector, k + 1, search_k=manifest["search_k"])
            latencies.append(time.perf_counter() - started)
            found.append(ids)
            qvectors.append(vector)
        qlabels = qcat[label_column].to_numpy()
        qids = qcat["product_id"].tolist()
        # A query that is itself in the index must not count finding itself.
        self_ids = np.array([next((i for i in f if items[i]["product_id"] == q), -1) for f, q in zip(found, qids)])
        found = [[i for i in f if i != s][:k] for f, s in zip(found, self_ids)]
        exact = exact_top_k(vectors, np.stack(qvectors), k, exclude=self_ids)
        n_label = {lab: int(c) for lab, c in zip(*np.unique(labels, return_counts=True))}
        rel = [[labels[i] == q for i in f] for f, q in zip(found, qlabels)]
        result = {
            "precision_at_1": _mean([r[:1].count(True) / 1 for r in rel]),
            "precision_at_5": _mean([r[:5].count(True) / 5 for r in rel]),
            "precision_at_10": _mean([r[:10].count(True) / 10 for r in rel]),
            "map_at_10": _mean([average_precision(r, n_label.get(q, 0) - (s >= 0), 10)
                                for r, q, s in zip(rel, qlabels, self_ids)]),
            "ann_recall_at_10": _mean([len(set(f[:10]) & set(e[:10].tolist())) / min(10, len(e))
                                       for f, e in zip(found, exact)]),
            "n_queries": len(qpaths),
            "latency_ms_p50": round(1000 * float(np.median(latencies)), 3) if latencies else None,
        }
        report = Path(report or "eval/report.json")
        storage.write_json(report, result)
        details = {"index": str(folder), "version": manifest["version"], "encoder": manifest["encoder"],
                   "label_column": label_column, "k": k, "search_k": manifest["search_k"], "queries": queries,
                   "latency_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 3) if latencies else None,
                   "query_rows_rejected": int(len(read_catalog(layout.rejects_csv)))}
        storage.write_json(report.with_suffix(".details.json"), details)
        rows = []
        for q in np.random.default_rng(0).permutation(len(qpaths))[:GRID_QUERIES]:
            results = [(str(Path(manifest["catalog"]) / items[i]["image"]), f"{labels[i]}", bool(labels[i] == qlabels[q]))
                       for i in found[q][:GRID_RESULTS]]
            rows.append(((qpaths[q], str(qlabels[q])), results))
        plots.results_grid(rows, report.with_suffix(".png"))
    log.info("evaluate: %s", result)
    return result


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
