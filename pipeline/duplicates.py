"""Report near-duplicate products of the current index: a CSV of the groups and a contact sheet of the largest.

What a merchandiser checks before publishing a catalog: the same photo listed under two products, a product
uploaded twice. `python -m pipeline duplicates --data-dir DIR [--threshold T]` reads `DIR/index/current` and
writes `DIR/reports/near-duplicates.csv` (group, product_id, name, category, similarity to the group's first)
and `DIR/reports/near-duplicates.png`. By default it reports the groups the index stored for the service's
`collapse=true`, at the threshold the index chose; `--threshold` finds them anew at another one, through the
index's own Annoy trees (`pipeline.indexing.duplicate_search`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.common import cli
from pipeline.common.errors import user_input
from pipeline.common.plots import contact_sheet
from pipeline.indexing import duplicate_search
from runtime import artifacts
from runtime.duplicate_groups import check_threshold, read_groups
from runtime.items import read_items
from runtime.layout import ITEMS_FILE, NEAR_DUPLICATES_CSV, NEAR_DUPLICATES_PNG, Layout

log = logging.getLogger(__name__)

SHEET_GROUPS = 12  # groups drawn on the contact sheet, largest first
SHEET_MEMBERS = 8  # products drawn per group


def run(data_dir: Path, threshold: float | None = None) -> dict:
    """Find the current index's near-duplicate products and write the report and its contact sheet.

    Args:
        data_dir: the data directory; reads `index/current`; writes `reports/`.
        threshold: the cosine similarity from which a product joins a group (0 to 1]; None: the index's own
            (the groups `collapse=true` serves).

    Returns:
        A summary: products, groups, products in groups, the largest group, threshold, seconds, paths.

    Raises:
        StageError: no index in the data directory (or one that fails verification), or a threshold outside (0, 1].
    """
    if threshold is not None:
        with user_input(ValueError):
            check_threshold(threshold)
    layout = Layout(Path(data_dir))
    with user_input(artifacts.ArtifactError):
        folder = artifacts.resolve_index(layout.current_index)
        # A delta (`pipeline remove`) shares its base's groups: the report is the base's, removed products included.
        folder, manifest = artifacts.base_of(folder, artifacts.verify(folder, check_hashes=False), check_hashes=False)
    items = read_items(folder / ITEMS_FILE)
    started = time.perf_counter()
    served = manifest.get("duplicate_threshold")
    neighbours = duplicate_search.of_index(folder, manifest, items)
    stored = read_groups(folder, manifest) if threshold in (None, served) else None
    if stored is not None:
        first, threshold = stored.astype(np.int64), served
        similarity = np.sum(neighbours.vectors * np.asarray(neighbours.vectors)[first], axis=1)
    else:
        first, similarity, info = duplicate_search.find(neighbours, threshold)
        threshold = info["threshold"]
    seconds = time.perf_counter() - started
    groups = _ranked_groups(first)
    layout.reports.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = layout.reports / NEAR_DUPLICATES_CSV, layout.reports / NEAR_DUPLICATES_PNG
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "product_id", "name", "category", "similarity"])
        for number, members in enumerate(groups, start=1):
            for p in members:
                writer.writerow([number, items[p]["product_id"], items[p]["name"], items[p]["category"],
                                 f"{similarity[p]:.4f}"])
    contact_sheet([(f"group {number}: {len(members)} products",
                    [(str(folder / items[p]["thumbnail"]), f"{items[p]['product_id']} {similarity[p]:.3f}")
                     for p in members[:SHEET_MEMBERS]])
                   for number, members in enumerate(groups[:SHEET_GROUPS], start=1)], png_path)
    if served != threshold:
        log.info("the index serves collapse=true at threshold %s; `python -m pipeline index --duplicate-threshold "
                 "%s` makes it use this one", served, threshold)
    return {"products": len(items), "groups": len(groups), "products_in_groups": int(sum(map(len, groups))),
            "largest": max(map(len, groups), default=0), "threshold": threshold, "seconds": round(seconds, 2),
            "index": manifest["version"], "csv": str(csv_path), "png": str(png_path)}


def _ranked_groups(first: np.ndarray) -> list[list[int]]:
    """The groups of more than one product, largest first (then by first product); members in catalog order."""
    members: dict[int, list[int]] = {}
    for p in np.flatnonzero(first != np.arange(len(first))):
        members.setdefault(int(first[p]), [int(first[p])]).append(int(p))
    return sorted(members.values(), key=lambda group: (-len(group), group[0]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--threshold", type=cli.threshold, default=None, metavar="auto|T",
                        help="cosine similarity from which products are near-duplicates (default, or auto: the index's "
                             "own, the groups collapse=true serves)")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    s = summary
    return (f"duplicates: {s['groups']} groups of near-duplicates ({s['products_in_groups']} of {s['products']} "
            f"products, largest {s['largest']}) at similarity >= {s['threshold']}, in {s['seconds']} s -> "
            f"{s['csv']} (+ {Path(s['png']).name})")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.duplicates --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
