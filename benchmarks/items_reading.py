"""Benchmark: what reading an index's `items.jsonl` costs as the catalog grows, for each of its readers.

`runtime.items` holds the three: `ItemStore` (each service worker, at load: line offsets, a product-id table and
the filter values, in numpy), `read_items` (the stages that go through every product) and `find_products`
(`pipeline remove`: a few ids among millions). The file is written once per size, with the index stage's line
layout and metadata columns of a fashion catalog; each reader runs in a fresh process, so that its peak memory is
its own. `--compare REV` also runs the readers as commit REV of this repository had them (the service's
`items.py` and the runtime layer's `artifacts.py` of then), side by side in the same run.

    python -m benchmarks.items_reading --products 100000,1000000
    python -m benchmarks.items_reading --products 1000000 --compare 931c61a
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT

COLUMNS = {"gender": ["Men", "Women", "Boys", "Girls", "Unisex"], "baseColour": ["Navy Blue", "Black", "White", "Red"],
           "season": ["Summer", "Winter", "Fall", "Spring"], "usage": ["Casual", "Formal", "Sports"]}
READERS = ("ItemStore", "read_items", "find_products")

# Runs in a fresh interpreter: argv = reader, items file, module file of the readers (or "" for runtime.items).
CHILD = """
import importlib.util, resource, sys, time
reader, path, source = sys.argv[1], sys.argv[2], sys.argv[3]
if source:
    spec = importlib.util.spec_from_file_location("readers_then", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    import runtime.items as module
from pathlib import Path
started = time.perf_counter()
if reader == "ItemStore":
    store = module.ItemStore(Path(path))
    n = len(store)
elif reader == "read_items":  # it took the version folder then, the file now
    n = len(module.read_items(Path(path).parent if source else Path(path)))
else:
    n = len(module.find_products(Path(path).parent, {"P0000007", "P0000123", "missing"}))
seconds = time.perf_counter() - started
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n)
"""


def write_items(path: Path, products: int, images_per_product: int = 2) -> None:
    """Write `products` items.jsonl lines as the index stage writes them (id and product_id first)."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in range(products):
            first = p * images_per_product
            images = [{"id": first + i, "image": f"images/Shirts/P{p:07d}~{i + 1}.jpg",
                       "thumbnail": f"thumbs/{first + i:064x}.jpg"} for i in range(images_per_product)]
            metadata = {column: values[(p * 7 + len(column)) % len(values)] for column, values in COLUMNS.items()}
            item = {"id": p, "product_id": f"P{p:07d}", "name": f"Product {p} shirt", "category": "Shirts",
                    "image": images[0]["image"], "thumbnail": images[0]["thumbnail"], "images": images,
                    "metadata": metadata}
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")


def readers_then(rev: str, folder: Path) -> dict[str, Path]:
    """The readers as commit `rev` had them, as module files runnable beside today's runtime package."""
    items = subprocess.run(["git", "show", f"{rev}:service/items.py"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout
    artifacts = subprocess.run(["git", "show", f"{rev}:runtime/artifacts.py"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout
    (folder / "items_then.py").write_text(items)
    (folder / "artifacts_then.py").write_text(artifacts)
    return {"ItemStore": folder / "items_then.py", "read_items": folder / "artifacts_then.py",
            "find_products": folder / "artifacts_then.py"}


def run(reader: str, path: Path, source: Path | None) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one reader over one file, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", CHILD, reader, str(path), str(source or "")], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    seconds, peak, _ = done.stdout.split()
    return float(seconds), float(peak)


def main(argv: list[str] | None = None) -> None:
    """Write the files, run every reader on each, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default="100000,1000000", help="catalog sizes, comma-separated")
    parser.add_argument("--compare", default=None, metavar="REV", help="also run the readers of commit REV")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        then = readers_then(args.compare, Path(tmp)) if args.compare else {}
        for products in (int(n) for n in args.products.split(",")):
            folder = Path(tmp) / f"p{products}"
            folder.mkdir()
            path = folder / "items.jsonl"
            write_items(path, products)
            size = path.stat().st_size / 2**20
            for reader in READERS:
                ways = [("now", None)] + ([(f"at {args.compare}", then[reader])] if then else [])
                for label, source in ways:
                    seconds, peak = run(reader, path, source)
                    rows.append((products, size, reader, label, seconds, peak))
    print(f"\nitems_reading: one process per reader and file; {len(COLUMNS)} metadata columns, 2 images a product")
    print(f"{'products':>10s} {'file MiB':>9s}  {'reader':14s} {'code':14s} {'seconds':>8s} {'peak RSS MiB':>13s}")
    for products, size, reader, label, seconds, peak in rows:
        print(f"{products:10,d} {size:9.1f}  {reader:14s} {label:14s} {seconds:8.2f} {peak:13.0f}")


if __name__ == "__main__":
    main()
