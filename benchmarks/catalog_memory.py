"""What the index stage's catalog work costs on a catalog of N distinct images: the table and items.jsonl.

`benchmarks.index_scale`'s synthetic catalogs share a few dozen real images (so that thumbnails can be made), which
makes their text columns light. Here every row has its own image hash, image path and source path, as in a real
catalog: the CSV is written once, then each way of reading it runs in a fresh process that loads the table as the
index stage does, checks the shard keys a shard at a time, and writes every items.jsonl line to /dev/null. Printed:
seconds and peak anonymous memory (its private memory, read after each step; a table's pages are not given back
while the stage runs). Python strings against Arrow's (pandas 3 uses Arrow when pyarrow is installed), whole rows
against the columns the index stage reads.

    python -m benchmarks.catalog_memory --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.catalog.ingest import CATALOG_COLUMNS

WAYS = {  # the Arrow ways run where pyarrow is installed (the pipeline does not need it: see the docs)
    "every column, Python strings": ("python", False),
    "every column, Arrow strings": ("pyarrow", False),
    "without acquire's source columns, Python strings (the index stage)": ("python", True),
    "without acquire's source columns, Arrow strings, Arrow's reader": ("arrow-reader", True),
}
SHARD_ROWS = 100_000


def write_catalog(path: Path, rows: int) -> None:
    """A catalog CSV of `rows` products, each with its own image, plus two metadata columns."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*CATALOG_COLUMNS, "baseColour", "articleType"])
        for i in tqdm(range(rows), desc="catalog", unit="row", mininterval=1.0, disable=None):
            sha, source = secrets.token_hex(32), secrets.token_hex(32)
            row = {"product_id": f"P{i:08d}", "name": f"Product {i} of a catalog with longer names",
                   "category": f"category-{i % 1000}", "image": f"images/{sha[:2]}/{sha}.jpg", "sha256": sha,
                   "width": "600", "height": "800", "duplicate_of": "", "source_image": f"shop/photos/{i}.jpg",
                   "source_sha256": source, "source_etag": ""}
            writer.writerow([*(row[c] for c in CATALOG_COLUMNS), ("Black", "Blue", "Red")[i % 3], f"type-{i % 140}"])


def measure(path: Path, storage: str, drop_source: bool) -> dict[str, float]:
    """In this process: load the table as the index stage does, slice its keys, write its items; return figures."""
    import pandas as pd

    from pipeline.catalog.table import SOURCE_COLUMNS
    from pipeline.indexing.items import item_lines

    def anon_mib() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("RssAnon")).split()[1]) / 1024

    base = anon_mib()
    started = time.perf_counter()
    drop = SOURCE_COLUMNS if drop_source else ()
    columns = [c for c in pd.read_csv(path, nrows=0).columns if c not in drop]
    if storage == "arrow-reader":
        table = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=columns, engine="pyarrow")
    else:
        table = pd.read_csv(path, dtype=pd.StringDtype(storage, na_value=float("nan")), keep_default_na=False,
                            usecols=columns)
    figures = {"rows": len(table), "table_s": time.perf_counter() - started, "table_mib": anon_mib() - base}
    keys = table["sha256"]
    for start in range(0, len(keys), SHARD_ROWS):
        list(keys[start:start + SHARD_ROWS])  # as check_shards takes them
    started = time.perf_counter()
    peak = 0.0
    with open(os.devnull, "w", encoding="utf-8") as out:
        for n, line in enumerate(item_lines(table)):
            out.write(line + "\n")
            if n % 65_536 == 0:
                peak = max(peak, anon_mib() - base)
    figures.update(items_s=time.perf_counter() - started, peak_mib=max(peak, anon_mib() - base))
    return figures


def main(argv: list[str] | None = None) -> None:
    """Write the catalog, measure each way in a fresh process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=None, help="where the CSV goes (default: a temp folder)")
    parser.add_argument("--measure", nargs=3, metavar=("CSV", "STORAGE", "DROP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        csv_path, storage, drop = args.measure
        print(json.dumps(measure(Path(csv_path), storage, drop == "1")))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        path = Path(tmp) / "catalog.csv"
        write_catalog(path, args.rows)
        size = path.stat().st_size
        results = []
        for name, (storage, drop) in WAYS.items():
            if storage != "python" and importlib.util.find_spec("pyarrow") is None:
                print(f"{name}: left out, pyarrow is not installed")
                continue
            out = subprocess.run([sys.executable, "-m", "benchmarks.catalog_memory", "--measure", str(path), storage,
                                  "1" if drop else "0"], check=True, capture_output=True, text=True).stdout
            results.append((name, json.loads(out.strip().splitlines()[-1])))
    print(f"\ncatalog_memory: {args.rows:,} rows of distinct images, CSV {size / 2**20:.0f} MiB; peak anonymous "
          "memory over the process's start")
    print("| way | table | table read | items.jsonl lines | peak with items |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results:
        print(f"| {name} | {r['table_mib'] / 1024:.2f} GiB | {r['table_s']:.1f} s | {r['items_s']:.1f} s | "
              f"{r['peak_mib'] / 1024:.2f} GiB |")


if __name__ == "__main__":
    main()
