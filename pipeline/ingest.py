"""Source records to a catalog folder: every image verified, normalised to an upright RGB JPEG, filed by category.

Acquire ingests a shop's catalog with it, evaluate the query photos: both get the same checks and files.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from pipeline.sources import Record, Reject, read_image_bytes
from runtime import imaging, storage
from runtime.layout import CATALOG_CSV, CONFLICTS_CSV, IMAGES_DIR, QUERIES_CSV, REJECTS_CSV

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["product_id", "name", "category", "image", "sha256", "width", "height", "duplicate_of",
                   "source_image"]
REJECT_COLUMNS = ["id", "source", "reason"]
CONFLICT_COLUMNS = ["product_id", "column", "kept", "ignored", "source"]
PER_IMAGE = ("image",)  # source columns that differ between a product's images by nature
INLINE_BELOW = 64  # fewer records than this are processed without starting worker processes


def safe_name(text: str, fallback: str) -> str:
    """Make a string safe as one path component, keeping it recognisable."""
    cleaned = re.sub(r"[^\w.-]+", "-", text).strip("-.")[:80]
    return cleaned or fallback


@dataclass
class Conflict:
    """A product metadata value that one of the product's rows gave differently (the first row's is kept)."""

    product_id: str
    column: str
    kept: str
    ignored: str
    source: str


def merge_products(records: list[Record]) -> tuple[list[Record], list[Reject], list[Conflict]]:
    """Give every image of a product its first row's name, category and metadata; list what the others contradict.

    Records stay one per image, in source order; a product's images are its records with the same product id.
    An image listed twice for one product is rejected the second time.
    """
    first: dict[str, Record] = {}
    seen: set[tuple[str, str]] = set()
    merged, rejects, conflicts = [], [], []
    for record in records:
        if (record.product_id, record.image) in seen:
            rejects.append(Reject(record.product_id, record.where or record.image,
                                  f"image listed twice for this product: {record.image}"))
            continue
        seen.add((record.product_id, record.image))
        head = first.setdefault(record.product_id, record)
        if head is not record:
            given = {"name": record.name, "category": record.category, **record.metadata}
            kept = {"name": head.name, "category": head.category, **head.metadata}
            conflicts += [Conflict(record.product_id, c, kept.get(c, ""), v, record.where)
                          for c, v in given.items() if c not in PER_IMAGE and v != kept.get(c, "")]
            record = replace(record, name=head.name, category=head.category,
                             metadata={**head.metadata, **{c: record.metadata[c] for c in PER_IMAGE
                                                           if c in record.metadata}})
        merged.append(record)
    return merged, rejects, conflicts


def image_stems(records: list[Record]) -> list[str]:
    """Each record's file name stem: the product id made path-safe, `~2`, `~3`... for a product's later images."""
    seen: dict[str, int] = {}
    stems = []
    for record in records:
        stem = safe_name(record.product_id, "product")
        if stem != record.product_id:
            stem = f"{stem}-{storage.sha256_bytes(record.product_id.encode())[:8]}"
        seen[record.product_id] = n = seen.get(record.product_id, 0) + 1
        stems.append(stem if n == 1 else f"{stem}~{n}")
    return stems


def _process(job: tuple[Record, str, str, int, int]) -> tuple[str, dict | str]:
    """Verify and normalise one record's image into its category folder; runs in a worker process."""
    record, stem, out_root, max_side, max_pixels = job
    try:
        data = read_image_bytes(record.image)
    except Exception as exc:  # noqa: BLE001 - any read failure rejects this image only
        return "reject", f"image unreadable: {exc}"
    try:
        img = imaging.open_image(data, max_pixels=max_pixels)
        jpeg = imaging.normalise(img, max_side=max_side)
    except imaging.ImageRejected as exc:
        return "reject", str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a 50,000-image run
        return "reject", f"could not decode: {type(exc).__name__}: {exc}"
    rel = Path(IMAGES_DIR) / safe_name(record.category, "uncategorized") / f"{stem}.jpg"
    target = Path(out_root) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(jpeg)
    width, height = img.size
    return "ok", {"image": rel.as_posix(), "sha256": storage.sha256_bytes(jpeg), "width": width, "height": height}


def _catalog_row(record: Record, result: dict) -> dict[str, str]:
    row = {"product_id": record.product_id, "name": record.name, "category": record.category or "uncategorized",
           **{k: str(v) for k, v in result.items()}, "duplicate_of": "", "source_image": record.image}
    for key, value in record.metadata.items():
        if key in row:
            if row[key] != value:
                row[f"source_{key}"] = value
        else:
            row[key] = value
    return row


def ingest(records: list[Record], out: Path, max_side: int = imaging.MAX_SIDE, max_pixels: int = imaging.MAX_PIXELS,
           workers: int | None = None) -> tuple[list[dict], list[Reject]]:
    """Verify and normalise every record's image into `out/images/<category>/`, one process per core.

    Args:
        records: the source's readable rows.
        out: the catalog folder being written.
        max_side: longer side of the normalised JPEGs.
        max_pixels: pixel count above which an image is refused as a decompression bomb.
        workers: decoding processes (default: one per core).

    Returns:
        The catalog rows of the accepted images (in record order, exact duplicates flagged in `duplicate_of`),
        and a reject with its reason for every other record.
    """
    jobs = [(r, stem, str(out), max_side, max_pixels) for r, stem in zip(records, image_stems(records), strict=True)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="acquire", unit="img", disable=None)
    if len(jobs) < INLINE_BELOW or workers == 1:
        results = map(_process, jobs)
        pool = None
    else:
        # spawn, not fork: the caller may already have TensorFlow loaded, which does not survive a fork.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_process, jobs, chunksize=16)
    accepted, rejects = [], []
    try:
        for record, (status, payload) in zip(records, results, strict=True):
            bar.update()
            if status == "ok":
                accepted.append(_catalog_row(record, payload))
            else:
                rejects.append(Reject(record.product_id, record.image, payload))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    first_by_hash: dict[str, str] = {}
    for row in accepted:
        first = first_by_hash.setdefault(row["sha256"], row["product_id"])
        row["duplicate_of"] = "" if first == row["product_id"] else first
    return accepted, rejects


def write_tables(folder: Path, accepted: list[dict], rejects: list[Reject], queries: list[dict] | None = None,
                 conflicts: list[Conflict] | None = None) -> None:
    """Write catalog.csv, rejects.csv, conflicts.csv and (with held-out rows) queries.csv into a catalog folder."""
    import pandas as pd

    def frame(rows: list[dict]) -> pd.DataFrame:
        df = pd.DataFrame(rows, dtype=str)
        return df.reindex(columns=CATALOG_COLUMNS + [c for c in df.columns if c not in CATALOG_COLUMNS])

    frame(accepted).to_csv(folder / CATALOG_CSV, index=False)
    pd.DataFrame([vars(r) for r in rejects], columns=["product_id", "source", "reason"]) \
        .set_axis(REJECT_COLUMNS, axis=1).to_csv(folder / REJECTS_CSV, index=False)
    pd.DataFrame([vars(c) for c in conflicts or []], columns=CONFLICT_COLUMNS).to_csv(folder / CONFLICTS_CSV,
                                                                                     index=False)
    if queries:
        # queries.csv is itself a csv: source (id, image, name, category), so evaluate can read it back.
        q = frame(queries).drop(columns=["id"], errors="ignore")
        q.insert(0, "id", q["product_id"])
        q.to_csv(folder / QUERIES_CSV, index=False)


def reason_kind(reason: str) -> str:
    """Group reject reasons for a summary ("image missing: no images/1.jpg" -> "image missing")."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()
