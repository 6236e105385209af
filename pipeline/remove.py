"""Remove products from the index now: a delta version without them, switched in as `index/current` in seconds.

A sold-out product must leave the shop's search at once, not after tonight's rebuild. An Annoy index cannot change
once built, so this writes a small delta version beside the full one it is served over (its base): the product
ids it no longer serves, and a manifest that names the base by its manifest's sha256. The service loads the base
once and applies the delta; `deploy --artifacts-only` uploads only the delta's files. Removing more products later
writes a new delta over the same base holding every removal so far. The next `pipeline index` (or `pipeline run`)
works from the catalog again, where the removed products must be gone too, or they come back.

    python -m pipeline remove --data-dir data/shop SKU-1 SKU-2
    python -m pipeline remove --data-dir data/shop --from-file sold-out.txt
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.common import cli
from pipeline.common.errors import StageError, require, user_input
from pipeline.common.locks import locked, remove_leftovers
from pipeline.indexing import deltas
from runtime import artifacts
from runtime.items import find_products
from runtime.layout import Layout
from runtime.versions import KEEP_VERSIONS

log = logging.getLogger(__name__)


def read_ids(product_ids: Sequence[str], from_file: Path | None) -> list[str]:
    """The product ids given on the command line and in `from_file` (one per line; blank lines and lines starting
    with # are skipped), first occurrence first, each once."""
    ids = list(product_ids)
    if from_file is not None:
        text = Path(from_file).read_text(encoding="utf-8")
        ids += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return list(dict.fromkeys(ids))


def run(data_dir: Path, product_ids: Sequence[str] = (), from_file: Path | None = None,
        keep: int = KEEP_VERSIONS) -> dict:
    """Write a delta version of the current index without `product_ids` and make it current.

    Args:
        data_dir: the data directory; reads and writes `index/`.
        product_ids: the catalog's product ids to remove.
        from_file: a text file of more product ids, one per line.
        keep: index versions to keep (a kept delta's base is always kept).

    Returns:
        The new manifest, with `removed_now` (ids removed by this call), `unknown` (ids the index does not serve:
        never in it, or removed before) and `seconds`.

    Raises:
        StageError: no index yet (or one that fails verification), no product id given, or none of them is served
            (nothing to write); another index run holds the lock.
    """
    started = time.perf_counter()
    layout = Layout(Path(data_dir))
    wanted = read_ids(product_ids, from_file)
    if not wanted:
        raise StageError("no product ids to remove: give them as arguments or with --from-file")
    with locked(layout.index, "index"):
        remove_leftovers(layout.index, (".tmp-*", ".current-*"))
        with user_input(artifacts.ArtifactError):  # no index yet, or one damaged: the user runs index again
            current = artifacts.resolve_index(require(layout.current_index, "index", "index"))
            manifest = artifacts.verify(current, check_hashes=False)
            base, base_manifest = artifacts.base_of(current, manifest, check_hashes=False)
        before = set(artifacts.read_removed(current, manifest))
        added = deltas.read_added(current, manifest)
        added_ids = {str(item["product_id"]) for item in added.items}
        in_base = find_products(base, set(wanted) - added_ids - before)
        removed_now = [p for p in wanted if p in added_ids or p in in_base]
        unknown = [p for p in wanted if p not in added_ids and p not in in_base]
        for product_id in unknown:
            log.warning("remove: %r is not served by version %s (%s)", product_id, manifest["version"],
                        "removed before" if product_id in before else "no such product")
        if not removed_now:
            raise StageError(f"none of the {len(wanted)} product id(s) is served by version {manifest['version']} "
                             f"(unknown or removed before: {', '.join(unknown[:10])}"
                             f"{' ...' if len(unknown) > 10 else ''}); nothing written")
        delta = deltas.write(layout, base, base_manifest, sorted(before | set(in_base)),
                             added.without(set(removed_now)), keep)
    seconds = time.perf_counter() - started
    log.info("index %s: %d product(s) removed now, over base %s, %.2f s", delta["version"], len(removed_now),
             base.name, seconds)
    return {**delta, "removed_now": removed_now, "unknown": unknown, "seconds": round(seconds, 3)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's options to a parser: one per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("product_ids", nargs="*", default=(), metavar="PRODUCT_ID",
                        help="the catalog's product ids to remove")
    parser.add_argument("--from-file", type=Path, default=None, metavar="FILE",
                        help="a text file of product ids, one per line")
    parser.add_argument("--keep", type=int, default=KEEP_VERSIONS,
                        help=f"index versions to keep ({KEEP_VERSIONS}; a kept delta's base is kept too)")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    s = summary
    unknown = (f"; not served, left alone: {', '.join(s['unknown'][:20])}{' ...' if len(s['unknown']) > 20 else ''}"
               if s["unknown"] else "")
    return (f"remove: {len(s['removed_now'])} product(s) removed in {s['seconds']} s; {s['products']} served, "
            f"{s['delta']['removed']} removed in all since full version {s['delta']['base']}{unknown} -> "
            f"{Layout(options['data_dir']).index / s['version']} (index/current)")


def main(argv: list[str] | None = None) -> None:
    """Run the command from the command line (`python -m pipeline.remove --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
