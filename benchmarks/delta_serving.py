"""What a delta version costs: its writing seconds, its bytes against the full version's, a worker's load seconds
(the full version; the delta over a base it already serves; the delta from cold), and query p50 with and without
the delta, side by side in one process, for deltas of growing size: what `--delta-limit` is chosen from.

For each share S of the products of DATA's current (full) index, two deltas over it:
- "removed": `pipeline remove` of S of the products (the sold-out case);
- "changed": S of the products removed from the base and served again from the delta (`pipeline.indexing.deltas.write`,
  as the index stage writes a changed product): the delta's added products are scanned exactly at every query.
  The products served are the same as the full version's: "same top 10" is the share of the full version's top
  10 that the delta's holds (1 but for ties when both scan exactly; Annoy's misses differ from the exact scan's).
The same queries go to the full version and to the delta, interleaved: "search" (an unfiltered top 10 for a
catalog product's vector, as an image search after its encoder pass), "similar" ("more like this" of a random
product) and "filtered" (top 10 within the category of the query's product). Afterwards `index/current` points
at the full version again and the deltas are deleted: the data dir is as it was.

    python -m benchmarks.index_scale --sizes 1000000 --extractor-from /tmp/fs-mp --work /tmp/scale --keep
    python -m benchmarks.delta_serving --data-dir /tmp/scale/n1000000 --shares 0.01,0.05,0.1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import remove
from pipeline.indexing import deltas
from runtime import artifacts, versions
from runtime.layout import MANIFEST, Layout
from service.searcher import Searcher

KINDS = ("search", "similar", "filtered")


def folder_bytes(folder: Path) -> int:
    """Bytes of the files a version's manifest lists (what deploy uploads at most), its manifest included."""
    manifest = artifacts.verify(folder, check_hashes=False)
    return sum(entry["bytes"] for entry in manifest["files"].values()) + (folder / MANIFEST).stat().st_size


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    out = call(*args, **kwargs)
    return time.perf_counter() - started, out


def changed_delta(layout: Layout, base: Searcher, numbers: np.ndarray) -> dict:
    """A delta that removes these products from the base and adds them back unchanged (as a changed product)."""
    items = [base.items[int(i)] for i in np.sort(numbers)]
    names = {image["thumbnail"] for item in items for image in item["images"]}
    added = deltas.renumber(items, base.vectors, {name: base.folder / name for name in names})
    return deltas.write(layout, base.folder, base.manifest, [str(item["product_id"]) for item in items], added,
                        keep=1000)


def compare(base: Searcher, delta: Searcher, queries: np.ndarray) -> tuple[dict[str, dict[str, list]], float]:
    """Time every kind of query on both searchers, interleaved; return the times and the mean share of the full
    version's top 10 that the delta's holds too (ties aside, 1 when both scan exactly)."""
    times: dict[str, dict[str, list[float]]] = {kind: {"full": [], "delta": []} for kind in KINDS}
    overlap = []
    for q in queries.tolist():
        item = base.items[q]
        vector = base.products.product_vector(q)
        category = {"category": [str(item["category"])]}
        answers: dict[str, list] = {}
        for name, searcher in (("full", base), ("delta", delta)) if q % 2 else (("delta", delta), ("full", base)):
            for kind, call, args in (("search", searcher.search, (vector, 10)),
                                     ("similar", searcher.similar, (item["product_id"], 10)),
                                     ("filtered", searcher.search, (vector, 10, category))):
                seconds, matches = timed(call, *args)
                times[kind][name].append(seconds)
                answers.setdefault(kind, []).append({m.item["product_id"] for m in matches})
        overlap += [len(first & second) / max(len(first), 1) for first, second in answers.values()]
    return times, float(np.mean(overlap))


def main(argv: list[str] | None = None) -> None:
    """Write each delta, measure, and put the data dir back."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir whose current index is full")
    parser.add_argument("--shares", default="0.01", help="shares of the products in a delta, comma-separated")
    parser.add_argument("--queries", type=int, default=500, help="queries of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    layout = Layout(args.data_dir)
    base_folder = layout.current_index.resolve()
    if artifacts.verify(base_folder, check_hashes=False).get("delta"):
        raise SystemExit(f"{base_folder} is a delta; give a data dir whose current index is a full version")
    rng = np.random.default_rng(args.seed)
    Searcher(base_folder)  # the first load also imports TensorFlow and reads the files into the page cache
    load_full, base = timed(Searcher, base_folder)
    n = base.count
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        chosen = rng.choice(n, max(1, int(n * share)), replace=False)
        for kind in ("removed", "changed"):
            if kind == "removed":
                write_s, summary = timed(remove.run, args.data_dir, [base.items[int(i)]["product_id"] for i in chosen],
                                         keep=1000)
            else:
                write_s, summary = timed(changed_delta, layout, base, chosen)
            folder = layout.index / summary["version"]
            try:
                load_reuse, delta = timed(Searcher, folder, reuse=base)
                load_cold, _ = timed(Searcher, folder)
                served = np.flatnonzero(~delta.removed)
                queries = rng.choice(served, min(args.queries, len(served)), replace=False)
                times, overlap = compare(base, delta, queries)
                rows.append((share, kind, len(chosen), write_s, folder_bytes(folder), load_reuse, load_cold, times,
                             overlap))
            finally:
                versions.point_local(layout.index, base_folder.name)
                shutil.rmtree(folder, ignore_errors=True)
    print(f"\ndelta_serving: {args.data_dir}, {n:,} products, {args.queries} queries of each kind, interleaved; "
          f"full version {folder_bytes(base_folder):,} bytes, loaded in {load_full:.2f} s")
    print("| delta | products | written in | bytes | load over its base | load cold | "
          + " | ".join(f"{kind} p50 full / delta" for kind in KINDS) + " | same top 10 |")
    print("| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " | --- |")
    for share, kind, count, write_s, size, reuse, cold, times, overlap in rows:
        cells = []
        for k in KINDS:
            full, with_delta = (float(np.percentile(times[k][name], 50)) * 1000 for name in ("full", "delta"))
            cells.append(f"{full:.2f} / {with_delta:.2f} ms ({with_delta - full:+.2f})")
        print(f"| {share:.0%} {kind} | {count:,} | {write_s:.2f} s | {size:,} | {reuse:.3f} s | {cold:.2f} s | "
              + " | ".join(cells) + f" | {overlap:.3f} |")


if __name__ == "__main__":
    main()
