"""Stage 3, vectorize: unit-vector embeddings of every catalog row, in catalog order, in resumable shards."""

from __future__ import annotations

import argparse
import io
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import storage
from pipeline.layout import Layout

log = logging.getLogger(__name__)

SHARD_ROWS = 1024
SUMMARY = "embeddings.json"


def shard_name(i: int) -> str:
    """File name of embedding shard `i`."""
    return f"part-{i:05d}.npy"


def shard_id(keys: list[str], export_id: str) -> str:
    """What a shard's bytes depend on: its rows' image contents and the extractor that embedded them."""
    return storage.sha256_bytes(("\n".join(keys) + "\n" + export_id).encode())


def run(data_dir: Path, shard_rows: int = SHARD_ROWS, batch_size: int = 64) -> dict:
    """Embed the catalog with the exported extractor; resume after a kill, re-embed only what changed.

    Each shard of `shard_rows` catalog rows is written as `part-NNNNN.npy` plus a `.json` stamp naming its
    content (image hashes and extractor export id). A shard whose stamp matches is kept as it is; for the
    others the backbone runs only on images missing from the feature cache (new products), and the head
    (cheap) runs on the cached features.

    Args:
        data_dir: the data directory; reads `catalog/` and `model/extractor/`, writes `embeddings/`.
        shard_rows: catalog rows per shard.
        batch_size: images per backbone call.

    Returns:
        The summary written to `embeddings/embeddings.json`.
    """
    from pipeline.extractor import load_extractor
    from pipeline.features import FeatureCache, compute_missing
    from pipeline.finetune import catalog_inputs

    layout = Layout(Path(data_dir))
    _, keys, paths = catalog_inputs(layout)
    extractor = load_extractor(layout.extractor)
    export_id = extractor.config["export_id"]
    cache = FeatureCache(layout.features(extractor.fingerprint))
    out = layout.embeddings
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (len(keys) + shard_rows - 1) // shard_rows
    started = time.perf_counter()
    kept = computed = 0
    missing = cache.count_missing(keys)
    with tqdm(total=missing, desc="vectorize", unit="img", disable=None) as bar:
        for i in range(n_shards):
            rows = slice(i * shard_rows, (i + 1) * shard_rows)
            shard_keys = keys[rows]
            stamp = {"shard": i, "rows": [rows.start, rows.start + len(shard_keys)],
                     "content": shard_id(shard_keys, export_id), "export_id": export_id}
            stamp_file = out / shard_name(i).replace(".npy", ".json")
            if (out / shard_name(i)).is_file() and stamp_file.is_file() and storage.read_json(stamp_file) == stamp:
                kept += 1
                continue
            computed += compute_missing(cache, shard_keys, paths[rows], extractor.features, batch_size, bar)
            vectors = extractor.head(cache.get(shard_keys))
            buffer = io.BytesIO()
            np.save(buffer, vectors.astype(np.float32))
            storage.atomic_write_bytes(out / shard_name(i), buffer.getvalue())
            storage.write_json(stamp_file, stamp)
    for stale in sorted(out.glob("part-*")):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    seconds = time.perf_counter() - started
    summary = {"rows": len(keys), "dim": extractor.dim, "shards": n_shards, "shard_rows": shard_rows,
               "shards_kept": kept, "backbone_images_computed": computed, "export_id": export_id,
               "encoder": extractor.config["encoder"], "seconds": round(seconds, 3),
               "images_per_s": round(computed / seconds, 1) if computed else None}
    storage.write_json(out / SUMMARY, summary)
    log.info("vectorize: %s", summary)
    return summary


def load_embeddings(data_dir: Path) -> np.ndarray:
    """Return the embeddings [N, dim] of a finished vectorize run, checked against the catalog."""
    layout = Layout(Path(data_dir))
    summary_file = layout.embeddings / SUMMARY
    if not summary_file.is_file():
        raise FileNotFoundError(f"no embeddings in {layout.embeddings}; run `python -m pipeline vectorize` first")
    summary = storage.read_json(summary_file)
    vectors = np.concatenate([np.load(layout.embeddings / shard_name(i)) for i in range(summary["shards"])])
    if len(vectors) != summary["rows"]:
        raise ValueError(f"{layout.embeddings}: {len(vectors)} rows in shards, {summary['rows']} expected; "
                         "re-run vectorize")
    return vectors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser."""
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="catalog rows per shard")
    parser.add_argument("--batch-size", type=int, default=64, help="images per backbone call")


def main(args: argparse.Namespace) -> None:
    """Run the stage from parsed CLI arguments."""
    s = run(args.data_dir, args.shard_rows, args.batch_size)
    rate = f" at {s['images_per_s']} img/s" if s["images_per_s"] else ""
    print(f"vectorize: {s['rows']} embeddings ({s['dim']}-d) in {s['shards']} shards, {s['shards_kept']} kept "
          f"from an earlier run, {s['backbone_images_computed']} images through the backbone{rate}")
