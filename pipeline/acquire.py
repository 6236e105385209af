"""Stage 1, acquire: read a catalog source, verify and normalise every image, categorise, report rejects."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipeline import imaging, storage
from pipeline.layout import Layout
from pipeline.sources import Record, Reject, read_image_bytes, read_source

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["product_id", "name", "category", "image", "sha256", "width", "height", "duplicate_of",
                   "source_image"]
REJECT_COLUMNS = ["id", "source", "reason"]
INLINE_BELOW = 64  # fewer records than this are processed without starting worker processes


def safe_name(text: str, fallback: str) -> str:
    """Make a string safe as one path component, keeping it recognisable."""
    cleaned = re.sub(r"[^\w.-]+", "-", text).strip("-.")[:80]
    return cleaned or fallback


def _process(job: tuple[Record, str, int, int]) -> tuple[str, dict | str]:
    """Verify and normalise one record's image into its category folder; runs in a worker process."""
    record, out_root, max_side, max_pixels = job
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
    file_id = safe_name(record.product_id, "product")
    if file_id != record.product_id:
        file_id = f"{file_id}-{storage.sha256_bytes(record.product_id.encode())[:8]}"
    rel = Path("images") / safe_name(record.category, "uncategorized") / f"{file_id}.jpg"
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


def holdout_split(rows: list[dict], fraction: float, column: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split rows into catalog and queries, `fraction` of each label's rows held out (labels with one row stay)."""
    import numpy as np

    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row.get(column, ""), []).append(i)
    held: set[int] = set()
    for label in sorted(by_label):
        members = by_label[label]
        n = int(round(len(members) * fraction)) if len(members) > 1 else 0
        held.update(rng.permutation(members)[: min(n, len(members) - 1)].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def run(source: str, data_dir: Path, category_column: str | None = None, max_side: int = imaging.MAX_SIDE,
        max_pixels: int = imaging.MAX_PIXELS, workers: int | None = None, holdout: float = 0.0,
        holdout_column: str = "category", seed: int = 0) -> dict:
    """Acquire a catalog: every input row ends up accepted in catalog.csv or explained in rejects.csv.

    Args:
        source: a source spec (see `pipeline.sources.read_source`).
        data_dir: the data directory; writes `catalog/` (replaced atomically when complete).
        category_column: the metadata column that names the category (fashion default: articleType).
        max_side: longer side of the normalised JPEGs.
        max_pixels: pixel count above which an image is refused as a decompression bomb.
        workers: decoding processes (default: one per core).
        holdout: fraction of the accepted products written to queries.csv instead of catalog.csv.
        holdout_column: the catalog column the held-out split is stratified on.
        seed: random seed of the held-out split.

    Returns:
        The summary written to `catalog/summary.json`.

    Raises:
        SourceError: the source cannot be read at all.
    """
    import pandas as pd

    layout = Layout(Path(data_dir))
    records, rejects = read_source(source, layout.cache, category_column)
    n_input = len(records) + len(rejects)
    log.info("%s: %d rows, %d rejected before decoding", source, n_input, len(rejects))
    staging = layout.root / f".catalog.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    jobs = [(r, str(staging), max_side, max_pixels) for r in records]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="acquire", unit="img", disable=None)
    if len(jobs) < INLINE_BELOW or workers == 1:
        results = map(_process, jobs)
        pool = None
    else:
        # spawn, not fork: the caller may already have TensorFlow loaded, which does not survive a fork.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_process, jobs, chunksize=16)
    accepted = []
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
        row["duplicate_of"] = first_by_hash.setdefault(row["sha256"], row["product_id"])
        if row["duplicate_of"] == row["product_id"]:
            row["duplicate_of"] = ""
    queries: list[dict] = []
    if holdout:
        accepted, queries = holdout_split(accepted, holdout, holdout_column, seed)
    assert len(accepted) + len(queries) + len(rejects) == n_input, "a row was lost between source and catalog"

    def frame(rows: list[dict], first: list[str]) -> pd.DataFrame:
        df = pd.DataFrame(rows, dtype=str)
        return df.reindex(columns=first + [c for c in df.columns if c not in first])

    frame(accepted, CATALOG_COLUMNS).to_csv(staging / "catalog.csv", index=False)
    pd.DataFrame([vars(r) for r in rejects], columns=["product_id", "source", "reason"]) \
        .set_axis(REJECT_COLUMNS, axis=1).to_csv(staging / "rejects.csv", index=False)
    if queries:
        # queries.csv is itself a csv: source (id, image, name, category), so evaluate can read it back.
        q = frame(queries, CATALOG_COLUMNS)
        q = q.drop(columns=["id"], errors="ignore")
        q.insert(0, "id", q["product_id"])
        q.to_csv(staging / "queries.csv", index=False)
    reasons = Counter(_reason_kind(r.reason) for r in rejects)
    summary = {
        "source": source, "input_rows": n_input, "accepted": len(accepted), "held_out": len(queries),
        "rejected": len(rejects), "duplicates": sum(1 for r in accepted + queries if r["duplicate_of"]),
        "categories": len({r["category"] for r in accepted}), "reject_reasons": dict(reasons.most_common()),
    }
    storage.write_json(staging / "summary.json", summary)
    _swap_in(staging, layout.catalog)
    log.info("acquire: %s", summary)
    return summary


def _reason_kind(reason: str) -> str:
    """Group reject reasons for the summary ("image missing: no images/1.jpg" -> "image missing")."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with `staging` so that no reader ever sees a half-written catalog."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser."""
    parser.add_argument("--source", required=True,
                        help="fashion:DIR | folders:DIR | csv:FILE | kaggle:OWNER/DATASET; DIR/FILE may be s3://...")
    parser.add_argument("--category-column", default=None,
                        help="metadata column naming the category (fashion: articleType; csv: category)")
    parser.add_argument("--max-side", type=int, default=imaging.MAX_SIDE, help="longer side of stored JPEGs")
    parser.add_argument("--max-pixels", type=int, default=imaging.MAX_PIXELS, help="decompression-bomb limit")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    parser.add_argument("--holdout", type=float, default=0.0, help="fraction held out as queries.csv")


def main(args: argparse.Namespace) -> None:
    """Run the stage from parsed CLI arguments and print its summary."""
    summary = run(args.source, args.data_dir, args.category_column, args.max_side, args.max_pixels, args.workers,
                  args.holdout, "category")
    print(f"acquire: {summary['input_rows']} rows -> {summary['accepted']} accepted, "
          f"{summary['held_out']} held out as queries, {summary['rejected']} rejected, "
          f"{summary['duplicates']} exact duplicates flagged")
    for reason, count in summary["reject_reasons"].items():
        print(f"  rejected: {count:6d}  {reason}")
    print(f"  details: {Layout(args.data_dir).rejects_csv}")
