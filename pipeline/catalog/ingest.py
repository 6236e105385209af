"""Source records to a catalog folder: every image verified, normalised to an upright RGB JPEG, filed by category.

Acquire ingests a shop's catalog with it, evaluate the query photos: both get the same checks and files. Given
what the last run made (`previous_results`), an image whose source bytes are unchanged (`pipeline.catalog.fetch`:
sha256, or the ETag of S3 and HTTP) keeps its normalised JPEG, hard-linked, and its record, without decoding.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from pipeline.catalog.fetch import Known, fetch
from pipeline.catalog.records import Record, Reject
from runtime import imaging, storage
from runtime.layout import CATALOG_CSV, CATALOG_SUMMARY, CONFLICTS_CSV, IMAGES_DIR, QUERIES_CSV, REJECTS_CSV

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["product_id", "name", "category", "image", "sha256", "width", "height", "duplicate_of",
                   "source_image", "source_sha256", "source_etag"]
REJECT_COLUMNS = ["id", "source", "reason", "source_sha256"]
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


@dataclass(frozen=True)
class Previous:
    """What the last run made of one source image: its source bytes' identity, its JPEG and that JPEG's record."""

    known: Known
    jpeg: str = ""  # the normalised JPEG's path in the catalog folder being replaced ...
    sha256: str = ""
    width: str = ""
    height: str = ""
    reason: str = ""  # ... or why the image was refused


def previous_results(catalog_dir: Path, settings: dict) -> dict[str, Previous]:
    """What the catalog in `catalog_dir` made of each source image (by locator), when it was normalised with the
    same settings (`max_side`, `max_pixels`); empty when there is none or it was made otherwise."""
    from pipeline.catalog.table import read_catalog

    try:
        made_with = storage.read_json(Path(catalog_dir) / CATALOG_SUMMARY).get("normalise")
    except (OSError, ValueError):
        return {}
    if made_with != settings:
        return {}
    out: dict[str, Previous] = {}
    for name in (CATALOG_CSV, QUERIES_CSV):
        path = Path(catalog_dir) / name
        if not path.is_file():
            continue
        table = read_catalog(path)
        if "source_sha256" not in table.columns:
            continue  # made before sources were hashed: decoded once more, then known
        root = str(catalog_dir)
        for locator, source_sha, etag, image, sha, width, height in zip(
                *(table[c].tolist() for c in ("source_image", "source_sha256", "source_etag", "image", "sha256",
                                              "width", "height")), strict=True):
            if source_sha:
                out[locator] = Previous(Known(source_sha, etag), os.path.join(root, image), sha, width, height)
    rejects = Path(catalog_dir) / REJECTS_CSV
    if rejects.is_file():
        table = read_catalog(rejects)
        if "source_sha256" in table.columns:
            for row in table[table["source_sha256"] != ""].itertuples(index=False):
                out.setdefault(row.source, Previous(Known(row.source_sha256), reason=row.reason))
    return out


def _process(job: tuple[Record, str, str, int, int, Previous | None]) -> tuple[str, dict]:
    """Verify and normalise one record's image into its category folder, or keep the last run's JPEG (or its
    refusal) when its source bytes are unchanged; runs in a worker process.

    Returns:
        ("ok" (decoded) or "kept", the record's image fields), or ("reject", reason and source sha256).
    """
    record, stem, out_root, max_side, max_pixels, previous = job
    rel = Path(IMAGES_DIR) / safe_name(record.category, "uncategorized") / f"{stem}.jpg"
    target = Path(out_root) / rel
    try:
        got = fetch(record.image, previous.known if previous else None)
    except Exception as exc:  # noqa: BLE001 - any read failure rejects this image only
        return "reject", {"reason": f"image unreadable: {exc}", "source_sha256": ""}
    source = {"source_sha256": got.sha256, "source_etag": got.etag}
    if got.data is None and previous is not None and previous.reason:
        return "reject", {"reason": previous.reason, "source_sha256": got.sha256}
    if got.data is None and previous is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(previous.jpeg, target)
        except FileNotFoundError:  # the last run's JPEG is gone: decode after all
            got = fetch(record.image)
        except OSError:  # another file system: a copy costs less than decoding again
            shutil.copyfile(previous.jpeg, target)
        if got.data is None:
            return "kept", {"image": rel.as_posix(), "sha256": previous.sha256, "width": previous.width,
                            "height": previous.height, **source}
    try:
        # a JPEG far larger than max_side is decoded at a DCT reduction that keeps 1.5 x max_side (a 12 MP photo at
        # 1/2): the stored JPEG is resampled from that, at a fraction of the cost of decoding every pixel
        img = imaging.open_image(got.data, max_pixels=max_pixels, at_least=3 * max_side // 2)
        jpeg = imaging.normalise(img, max_side=max_side)
    except imaging.ImageRejected as exc:
        return "reject", {"reason": str(exc), "source_sha256": got.sha256}
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a 50,000-image run
        return "reject", {"reason": f"could not decode: {type(exc).__name__}: {exc}", "source_sha256": got.sha256}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(jpeg)
    width, height = imaging.upright_size(got.data, max_pixels)  # the photo's own size, not the reduced decode's
    return "ok", {"image": rel.as_posix(), "sha256": storage.sha256_bytes(jpeg), "width": width, "height": height,
                  **source}


def _catalog_row(record: Record, result: dict) -> dict[str, str]:
    row = {"product_id": record.product_id, "name": record.name, "category": record.category or "uncategorized",
           **{k: str(v) for k, v in result.items()}, "duplicate_of": "", "source_image": record.image}
    for key, value in record.metadata.items():
        if key in row:
            # a clash keeps the source's value as source_<key>, unless that is a catalog column itself (a manifest's
            # `image` as given: `source_image` is the full locator, what a rerun recognises the image by)
            if row[key] != value and f"source_{key}" not in CATALOG_COLUMNS:
                row[f"source_{key}"] = value
        else:
            row[key] = value
    return row


def ingest(records: list[Record], out: Path, max_side: int = imaging.MAX_SIDE, max_pixels: int = imaging.MAX_PIXELS,
           workers: int | None = None, previous: dict[str, Previous] | None = None,
           counts: dict[str, int] | None = None) -> tuple[list[dict], list[Reject]]:
    """Verify and normalise every record's image into `out/images/<category>/`, one process per core.

    Args:
        records: the source's readable rows.
        out: the catalog folder being written.
        max_side: longer side of the normalised JPEGs.
        max_pixels: pixel count above which an image is refused as a decompression bomb.
        workers: decoding processes (default: one per core).
        previous: what the last run made of each source image (`previous_results`): an image whose source bytes
            are unchanged keeps its JPEG (hard-linked) and record, and is not decoded.
        counts: filled with `decoded` and `kept` (images not decoded again).

    Returns:
        The catalog rows of the accepted images (in record order, exact duplicates flagged in `duplicate_of`),
        and a reject with its reason for every other record.
    """
    previous = previous or {}
    jobs = [(r, stem, str(out), max_side, max_pixels, previous.get(r.image))
            for r, stem in zip(records, image_stems(records), strict=True)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="acquire", unit="img", disable=None)
    if len(jobs) < INLINE_BELOW or workers == 1:
        results = map(_process, jobs)
        pool = None
    else:
        # spawn, not fork: the caller may already have TensorFlow loaded, which does not survive a fork.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_process, jobs, chunksize=128)
    accepted, rejects = [], []
    counts = {} if counts is None else counts
    counts.update(decoded=0, kept=0)
    try:
        for record, (status, payload) in zip(records, results, strict=True):
            bar.update()
            if status in ("ok", "kept"):
                counts["decoded" if status == "ok" else "kept"] += 1
                accepted.append(_catalog_row(record, payload))
            else:
                rejects.append(Reject(record.product_id, record.image, payload["reason"], payload["source_sha256"]))
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
    pd.DataFrame([vars(r) for r in rejects], columns=["product_id", "source", "reason", "source_sha256"]) \
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
