"""Write the GroceryStoreDataset's shelf photos (`val.txt` by default) as a `csv:` query source for evaluate.

    python -m scripts.grocery_queries ../shared/data/grocery val.csv [--split val]
    python -m pipeline evaluate --data-dir DIR --queries csv:val.csv --label-column name

Each row's `name` is the class name exactly as in `classes.csv`, which is the `name` of the `grocery:` catalog's
product, so `--label-column name` measures product-level precision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.catalog.grocery import SPLITS, queries_manifest


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grocery", type=Path, help="the folder holding dataset/ (or dataset/ itself)")
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--split", choices=SPLITS, default="val", help="which listing to write (default val)")
    args = parser.parse_args(argv)
    print(f"{queries_manifest(args.grocery, args.out, args.split)} photos -> {args.out}")


if __name__ == "__main__":
    main()
