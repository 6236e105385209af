"""Choose finetune's `--retrain auto` rule: after products are added, how good is the old head against a retrained one?

On fashion-small (MediaPipe embedder, 10% of products held out as queries, articleType), a share of the catalog's
products is taken out and "added back" as a daily delta would add them: the old head is trained without them, the
retrained head with them, exactly as finetune trains (`benchmarks.quality_levers.train`, `--seeds` times). Both
embed the whole catalog; printed for each: precision@5 of the held-out queries against it (what shoppers see),
of the held-out queries of the added products' article types (where added products are the answers), and of
the added products themselves as queries against the rest (the retrained head has seen them: an upper bound).
Added products are drawn at random, or as whole article types that the old head never saw (`new classes`).

    python -m benchmarks.retrain_rule --shares 0.05,0.2 --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED
from benchmarks.quality_levers import embed, features, train
from pipeline import acquire
from pipeline.catalog.table import holdout_rows, read_catalog
from runtime.items import flatten
from runtime.layout import Layout
from runtime.products import ProductSearch


def added_rows(labels: np.ndarray, share: float, mode: str, seed: int) -> np.ndarray:
    """Catalog rows of the products a delta adds: `share` of them at random, or whole classes (`new classes`)."""
    rng = np.random.default_rng(seed)
    n = round(share * len(labels))
    if mode == "random":
        return np.sort(rng.choice(len(labels), n, replace=False))
    if mode == "new classes":
        chosen: list[int] = []
        for c in rng.permutation(np.unique(labels)):
            if len(chosen) >= n:
                break
            chosen += np.flatnonzero(labels == c).tolist()
        return np.sort(np.asarray(chosen))
    raise ValueError(f"mode must be 'random' or 'new classes', got {mode!r}")


def precision_at_5(base: np.ndarray, labels: np.ndarray, queries: np.ndarray, wanted: np.ndarray,
                   exclude: np.ndarray | None = None) -> float:
    """Mean precision@5 of queries against the catalog (one image per product), each query's own row excluded."""
    search = ProductSearch(base.astype(np.float32), *flatten([[i] for i in range(len(base))]), exact=True)
    hits = []
    for j, (q, want) in enumerate(zip(queries, wanted, strict=True)):
        found = search.search(q.astype(np.float32), 5, exclude=None if exclude is None else int(exclude[j]))
        hits.append(np.mean([labels[h.product] == want for h in found]))
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", default="0.05,0.2", help="shares of products added, comma-separated")
    parser.add_argument("--modes", default="random,new classes", help="how added products are drawn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        layout = Layout(work / "data")
        if not layout.catalog_csv.is_file():
            acquire.run(f"fashion:{SHARED / 'data' / 'fashion-small'}", layout.root, holdout=0.1,
                        holdout_column="category")
        catalog, qcat = read_catalog(layout.catalog_csv), read_catalog(layout.queries_csv)
        cached = work / "mediapipe-0.npz"
        if not cached.is_file():
            np.savez(cached, base=features("mediapipe", [str(layout.catalog / p) for p in catalog["image"]], False),
                     queries=features("mediapipe", [str(layout.catalog / p) for p in qcat["image"]], False))
        with np.load(cached) as f:
            x, xq = f["base"], f["queries"]
    classes, y = np.unique(catalog["category"].to_numpy(), return_inverse=True)
    qy = np.searchsorted(classes, qcat["category"].to_numpy())
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        for mode in args.modes.split(","):
            figures: dict[str, list[float]] = {k: [] for k in ("old q", "new q", "old t", "new t", "old a", "new a",
                                                               "s")}
            for seed in range(args.seeds):
                added = added_rows(y, share, mode, seed)
                kept = np.setdiff1d(np.arange(len(y)), added)
                fit_k, val_k = holdout_rows(y[kept], 0.1, seed)
                fit, val = holdout_rows(y, 0.1, seed)
                old = train(x, y, kept[fit_k], kept[val_k], seed=seed)
                started = time.perf_counter()
                new = train(x, y, fit, val, seed=seed)
                figures["s"].append(time.perf_counter() - started)
                typed = np.isin(qy, np.unique(y[added]))  # queries whose answers include added products
                for name, model in (("old", old), ("new", new)):
                    base = embed(model, x)
                    queries = embed(model, xq)
                    figures[f"{name} q"].append(precision_at_5(base, y, queries, qy))
                    figures[f"{name} t"].append(precision_at_5(base, y, queries[typed], qy[typed]))
                    figures[f"{name} a"].append(precision_at_5(base, y, base[added], y[added], exclude=added))
            row = (share, mode, *(float(np.mean(figures[k])) for k in ("old q", "new q", "old t", "new t", "old a",
                                                                        "new a", "s")))
            rows.append(row)
            print(f"share {share:.2f} {mode:12s}: queries old {row[2]:.4f} new {row[3]:.4f}; of added types old "
                  f"{row[4]:.4f} new {row[5]:.4f}; added old {row[6]:.4f} new {row[7]:.4f}; retraining {row[8]:.0f} s "
                  f"({' '.join(f'{k} ' + ','.join(f'{v:.3f}' for v in vs) for k, vs in figures.items() if k != 's')})",
                  flush=True)
    print(f"\nretrain_rule: fashion-small, {len(catalog)} catalog products, {len(qcat)} held-out queries, MediaPipe "
          f"embedder, precision@5 of articleType, mean of {args.seeds} seeds")
    print("| products added | drawn | held-out queries: old head | retrained | queries of the added types: old head | "
          "retrained | added products as queries: old head | retrained | retraining s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for share, mode, oq, nq, ot, nt, oa, na, s in rows:
        print(f"| {share:.0%} | {mode} | {oq:.3f} | {nq:.3f} | {ot:.3f} | {nt:.3f} | {oa:.3f} | {na:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
