"""What a delta version costs: `pipeline remove` seconds, its bytes against the full version's, a worker's load
seconds (the full version, the delta over a base it already serves, the delta from cold), and query p50 with and
without the delta, side by side in one process.

It removes `--share` of the products of DATA's current (full) index with `pipeline remove`, then times the same
queries on both searchers, interleaved: "search" (an unfiltered top 10 for a catalog product's vector, as an
image search after its encoder pass), "similar" ("more like this" of a random product) and "filtered" (top 10
within the category of the query's product). Afterwards `index/current` points at the full version again and
the delta is deleted, so the data dir is as it was.

    python -m benchmarks.index_scale --sizes 1000000 --extractor-from /tmp/fs-mp --work /tmp/scale --keep
    python -m benchmarks.delta_serving --data-dir /tmp/scale/n1000000 --share 0.01
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline import remove, versions
from runtime import artifacts
from runtime.layout import Layout
from service.searcher import Searcher


def folder_bytes(folder: Path) -> int:
    """Bytes of the files a version's manifest lists (what deploy uploads at most), its manifest included."""
    manifest = artifacts.verify(folder, check_hashes=False)
    return sum(entry["bytes"] for entry in manifest["files"].values()) + (folder / "manifest.json").stat().st_size


def timed(call, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    out = call(*args, **kwargs)
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> None:
    """Remove a share of the products, measure, and put the data dir back."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir whose current index is full")
    parser.add_argument("--share", type=float, default=0.01, help="share of the products to remove")
    parser.add_argument("--queries", type=int, default=500, help="queries of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    layout = Layout(args.data_dir)
    base_folder = layout.current_index.resolve()
    manifest = artifacts.verify(base_folder, check_hashes=False)
    if manifest.get("delta"):
        raise SystemExit(f"{base_folder} is a delta; give a data dir whose current index is a full version")
    rng = np.random.default_rng(args.seed)
    Searcher(base_folder)  # the first load also imports TensorFlow and reads the files into the page cache
    load_full, base = timed(Searcher, base_folder)
    n = base.count
    gone = rng.choice(n, max(1, int(n * args.share)), replace=False)
    ids = [base.items[int(i)]["product_id"] for i in gone]
    remove_s, summary = timed(remove.run, args.data_dir, ids, keep=1000)
    delta_folder = layout.index / summary["version"]
    try:
        load_reuse, delta = timed(Searcher, delta_folder, reuse=base)
        load_cold, cold = timed(Searcher, delta_folder)
        del cold
        served = np.flatnonzero(~delta.removed)
        queries = rng.choice(served, args.queries, replace=False)
        times: dict[str, dict[str, list[float]]] = {kind: {"full": [], "delta": []}
                                                    for kind in ("search", "similar", "filtered")}
        for q in queries.tolist():
            item = base.items[q]
            vector = base.products.product_vector(q)
            category = {"category": [str(item["category"])]}
            for name, searcher in (("full", base), ("delta", delta)) if q % 2 else (("delta", delta), ("full", base)):
                times["search"][name].append(timed(searcher.search, vector, 10)[0])
                times["similar"][name].append(timed(searcher.similar, item["product_id"], 10)[0])
                times["filtered"][name].append(timed(searcher.search, vector, 10, category)[0])
        full_bytes, delta_bytes = folder_bytes(base_folder), folder_bytes(delta_folder)
    finally:
        versions.point_current(layout, base_folder.name)
        shutil.rmtree(delta_folder, ignore_errors=True)
    print(f"delta_serving: {args.data_dir}, {n:,} products, {len(ids):,} removed ({args.share:.1%}), "
          f"{args.queries} queries of each kind, interleaved")
    print(f"pipeline remove: {remove_s:.2f} s; delta {delta_bytes:,} bytes against the full version's "
          f"{full_bytes:,} ({delta_bytes / full_bytes:.2e})")
    print(f"worker load: full version {load_full:.2f} s; delta over the base it serves {load_reuse:.3f} s; "
          f"delta from cold (base and delta) {load_cold:.2f} s")
    print("| query | p50 full | p50 with the delta | difference | p99 full | p99 with the delta |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, by in times.items():
        full, with_delta = (np.percentile(by[name], [50, 99]) * 1000 for name in ("full", "delta"))
        print(f"| {kind} | {full[0]:.2f} ms | {with_delta[0]:.2f} ms | {with_delta[0] - full[0]:+.2f} ms | "
              f"{full[1]:.2f} ms | {with_delta[1]:.2f} ms |")


if __name__ == "__main__":
    main()
