"""Delta versions: what changed since a full index version, written beside it and served over it.

A delta holds the product ids of its base it no longer serves (`removed.json`: removed or changed products) and
the products it adds (`added.jsonl` and `added.npy`: new products and the new form of changed ones, with their
thumbnails), and a manifest naming its base by its manifest's sha256. Deltas are cumulative: each holds every
change since its base, so a worker needs the base and one delta. `pipeline remove` and the index stage (when
less than `--delta-limit` of the catalog changed) write them; a full build folds them in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.table import SOURCE_COLUMNS
from pipeline.common.errors import StageError
from pipeline.indexing import versions
from pipeline.indexing.items import item_lines
from pipeline.indexing.thumbnails import build_thumbnails
from runtime import artifacts, storage
from runtime.embeddings import iter_shards
from runtime.items import read_items
from runtime.layout import ADDED_ITEMS, ADDED_VECTORS, ITEMS_FILE, MANIFEST, REMOVED_FILE, Layout, thumbnail_name

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# a delta's own, or the base build's record that the base's manifest keeps
NOT_COPIED = ("files", "inputs", "version", "created_at", "delta", "lineage", "search_k_measurements",
              "build_peak_rss_mb", "near_duplicates")


@dataclass
class Added:
    """Products a delta adds: items.jsonl lines numbered from 0 (image ids 0..n-1, rows of `vectors`), and the
    source of each thumbnail they name."""

    items: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    thumbs: dict[str, Path] = field(default_factory=dict)  # thumbnail path in the version -> file to link

    def without(self, product_ids: set[str]) -> Added:
        """These products less `product_ids`, renumbered."""
        kept = [item for item in self.items if str(item["product_id"]) not in product_ids]
        return renumber(kept, self.vectors, self.thumbs)


def renumber(items: list[dict], vectors: np.ndarray | None, thumbs: dict[str, Path]) -> Added:
    """Items numbered from 0 and their images 0..n-1, with the rows of `vectors` their old image ids named."""
    rows, out = [], []
    for number, item in enumerate(items):
        images = []
        for image in item["images"]:
            images.append({**image, "id": len(rows)})
            rows.append(image["id"])
        out.append({**item, "id": number, "images": images})
    names = {image["thumbnail"] for item in out for image in item["images"]}
    dim = vectors.shape[1] if vectors is not None else 0
    picked = np.asarray(vectors[np.asarray(rows, np.int64)], np.float32) if rows else np.empty((0, dim), np.float32)
    return Added(out, picked, {name: src for name, src in thumbs.items() if name in names})


def read_added(folder: Path, manifest: dict) -> Added:
    """The products a delta version adds (none for a full version or a delta that only removes)."""
    if not (manifest.get("delta") or {}).get("added"):
        return Added()
    items = read_items(Path(folder) / ADDED_ITEMS)
    vectors = artifacts.load_added_vectors(folder, manifest)
    names = {image["thumbnail"] for item in items for image in item["images"]}
    return Added(items, vectors, {name: Path(folder) / name for name in names})


def write(layout: Layout, base: Path, base_manifest: dict, removed: list[str], added: Added, keep: int,
          extra: dict | None = None) -> dict:
    """Write a delta version over `base` and make it current (call it holding `index/.lock`); return its manifest.

    Args:
        removed: the base's product ids not served (removed or changed).
        added: the products served besides the base's (new, or the new form of changed ones).
        keep: index versions to keep.
        extra: more manifest fields (the index stage's `inputs`, what changed).
    """
    with versions.staged(layout) as (version, now, staging):
        storage.write_json(staging / REMOVED_FILE, sorted(removed))
        if added.items:
            with open(staging / ADDED_ITEMS, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in added.items)
            np.save(staging / ADDED_VECTORS, np.ascontiguousarray(added.vectors, np.float32))
            for name, src in added.thumbs.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                storage.link_or_copy(src, staging / name)
        manifest = {**{k: v for k, v in base_manifest.items() if k not in NOT_COPIED},
                    "format_version": artifacts.FORMAT_VERSION, "version": version, "created_at": now.isoformat(),
                    "delta": {"base": base.name, "base_manifest_sha256": artifacts.manifest_sha256(base),
                              "removed": len(removed), "added": len(added.items)},
                    "products": int(base_manifest["products"]) - len(removed) + len(added.items),
                    "lineage": versions.lineage(layout), **(extra or {}), "files": artifacts.file_entries(staging)}
        storage.write_json(staging / MANIFEST, manifest)
    versions.make_current(layout, version, keep)
    return manifest


def normalised(item: dict) -> str:
    """A product's item with its numbers (product and image ids) taken out: what tells a changed product."""
    return json.dumps({**item, "id": 0, "images": [{**image, "id": 0} for image in item["images"]]},
                      ensure_ascii=False, sort_keys=True)


def digest(item: dict) -> bytes:
    """16 bytes that tell one normalised item from another."""
    return hashlib.blake2b(normalised(item).encode(), digest_size=16).digest()


def file_digests(path: Path) -> dict[str, bytes]:
    """product id -> digest, for every line of an items.jsonl file (one line in memory at a time)."""
    with open(path, encoding="utf-8") as fh:
        return {str(item["product_id"]): digest(item) for item in (json.loads(line) for line in fh if line.strip())}


def catalog_digests(catalog: pd.DataFrame) -> dict[str, bytes]:
    """product id -> digest of the item the index stage would write for it (`pipeline.indexing.items.item_lines`)."""
    return {str(item["product_id"]): digest(item) for item in map(json.loads, item_lines(catalog))}


@dataclass
class Changes:
    """What differs between a base version's products and the catalog's."""

    removed: list[str]  # in the base, not in the catalog
    added: list[str]  # in the catalog, not in the base
    changed: list[str]  # in both, with other images, name, category or metadata
    base_products: int

    @property
    def share(self) -> float:
        """The changed share of the catalog: what `--delta-limit` bounds."""
        return (len(self.removed) + len(self.added) + len(self.changed)) / max(self.base_products, 1)


def compare(base: Path, catalog: dict[str, bytes]) -> Changes:
    """The catalog's products (product id -> digest) against those of the base version's items.jsonl."""
    before = file_digests(base / ITEMS_FILE)
    removed = [p for p in before if p not in catalog]
    added = [p for p in catalog if p not in before]
    changed = [p for p, d in catalog.items() if p in before and before[p] != d]
    return Changes(removed, added, changed, len(before))


def readable_rows(layout: Layout, rows: int) -> np.ndarray:
    """The catalog rows whose images vectorize embedded (its shard stamps' `missing`), without reading a vector."""
    readable = np.ones(rows, bool)
    summary = storage.read_json(layout.embeddings_summary)
    for i in range(summary["shards"]):
        readable[[m["row"] for m in storage.read_json(layout.shard_stamp(i)).get("missing", [])]] = False
    return readable


def gather(layout: Layout, rows: np.ndarray, dim: int) -> np.ndarray:
    """The embeddings of catalog rows `rows` (ascending), reading only the shards that hold them."""
    out = np.empty((len(rows), dim), np.float32)
    at = 0
    for start, vectors, _ in iter_shards(layout.root):
        end = start + len(vectors)
        mine = rows[(rows >= start) & (rows < end)]
        out[at:at + len(mine)] = vectors[mine - start]
        at += len(mine)
    if at != len(rows):
        raise StageError(f"{layout.embeddings}: {at} of {len(rows)} rows found in the shards; re-run vectorize")
    return out


def index_delta(layout: Layout, current: Path, read_catalog: Callable[..., pd.DataFrame], rows: int, dim: int,
                export_id: str, options: dict, inputs: str, delta_limit: float, keep: int) -> dict | None:
    """Write a delta over the current version's base when less than `delta_limit` of its products changed; None
    when a full build is due (the base was built with other options or another model, or too much changed).

    Cost: one pass over the catalog's items and the base's items.jsonl (a digest per product), then only the
    changed products' rows, vectors and thumbnails.
    """
    manifest = artifacts.verify(current, check_hashes=False)
    base, base_manifest = artifacts.base_of(current, manifest, check_hashes=False)
    if base_manifest.get("options") != options or base_manifest.get("export_id") != export_id \
            or base_manifest.get("dim") != dim:
        log.info("index: a full build (the base %s was built with other options or another model)", base.name)
        return None
    started = time.perf_counter()
    readable = readable_rows(layout, rows)
    catalog = read_catalog(drop=SOURCE_COLUMNS)
    if not readable.all():
        catalog = catalog[readable].reset_index(drop=True)
    changes = compare(base, catalog_digests(catalog))
    if changes.share > delta_limit:
        log.info("index: %.2f%% of the products changed since %s, more than --delta-limit %.2f%%: a full build",
                 100 * changes.share, base.name, 100 * delta_limit)
        return None
    if changes.share == 0 and base == current:
        log.info("index: the catalog's products are those of version %s; index/current stays", base.name)
        return {**manifest, "unchanged": True}
    wanted = set(changes.added) | set(changes.changed)
    chosen = catalog["product_id"].astype(str).isin(wanted).to_numpy()
    sub = catalog[chosen].reset_index(drop=True)
    items = [json.loads(line) for line in item_lines(sub)]  # numbered from 0; image ids are `sub`'s rows
    vectors = gather(layout, np.flatnonzero(readable)[np.flatnonzero(chosen)], dim)
    images = dict(zip(sub["sha256"], (layout.catalog / p for p in sub["image"]), strict=True))
    build_thumbnails(images, layout.thumbs_cache, None)
    added = Added(items, vectors, {thumbnail_name(sha): layout.thumbs_cache / f"{sha}.jpg" for sha in images})
    summary = {"removed": len(changes.removed), "added": len(changes.added), "changed": len(changes.changed),
               "share": round(changes.share, 6), "seconds": round(time.perf_counter() - started, 2)}
    log.info("index: a delta over %s: %d removed, %d added, %d changed (%.2f%% of the products)", base.name,
             summary["removed"], summary["added"], summary["changed"], 100 * changes.share)
    return write(layout, base, base_manifest, changes.removed + changes.changed, added, keep,
                 {"inputs": inputs, "changes": summary})
