"""A data dir with N synthetic products, ready for the index stage: how to try the index and the service at 1M.

The vectors are the index benchmark's clustered unit vectors (reproducible from a seed). Each product gets a
name, a category (its cluster) and one of a few real images, so thumbnails and the shop page work; the
extractor is hard-linked from a real data dir of the same dimension, so the service loads and answers image
queries. Image queries do not find anything meaningful here (the vectors are not those of the images): this
data dir measures size, speed and memory, not quality.

    python scripts/make_synthetic_data_dir.py --out /tmp/syn1m --n 1000000 --extractor-from /tmp/fs-mediapipe
    python -m pipeline index --data-dir /tmp/syn1m
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.vectors import clustered
from pipeline.catalog.ingest import CATALOG_COLUMNS
from pipeline.catalog.table import read_catalog
from pipeline.vectorize import SHARD_ROWS
from runtime import embeddings, storage
from runtime.layout import EXTRACTOR_CONFIG, IMAGES_DIR, Layout


def make(out: Path, n: int, source: Path, clusters: int = 1000, images: int = 50, seed: int = 0) -> dict:
    """Write catalog/, embeddings/ and model/extractor/ of a synthetic data dir; return the embeddings summary."""
    src, dst = Layout(source), Layout(out)
    config = json.loads((src.extractor / EXTRACTOR_CONFIG).read_text())
    dim = int(config["dim"])
    if dst.root.exists() and any(dst.root.iterdir()):
        raise FileExistsError(f"{out} is not empty; give a new folder")
    storage.link_tree(src.extractor, dst.extractor)
    real = read_catalog(src.catalog_csv).head(images)
    dst.images.mkdir(parents=True)
    for row in real.itertuples():
        target = dst.images / f"{row.sha256}.jpg"
        if not target.exists():
            os.link(src.catalog / row.image, target)
    vectors, owner = clustered(n, dim, seed=seed, clusters=clusters, labels=True)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(real), n)
    images_by_pick = list(real[["sha256", "width", "height"]].itertuples(index=False, name=None))
    keys = []
    with open(dst.catalog_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CATALOG_COLUMNS)
        for i in tqdm(range(n), desc="catalog", unit="row", mininterval=1.0, disable=None):
            sha, width, height = images_by_pick[picks[i]]
            keys.append(sha)
            writer.writerow([f"S{i:07d}", f"Synthetic product {i}", f"cluster-{owner[i]:04d}",
                             f"{IMAGES_DIR}/{sha}.jpg", sha, width, height, "", "synthetic", "", ""])
    dst.embeddings.mkdir(parents=True)
    shards = (n + SHARD_ROWS - 1) // SHARD_ROWS
    for s in tqdm(range(shards), desc="embeddings", unit="shard", mininterval=1.0, disable=None):
        rows = slice(s * SHARD_ROWS, min(n, (s + 1) * SHARD_ROWS))
        embeddings.write_shard(dst, s, vectors[rows], embeddings.shard_stamp(s, rows.start, keys[rows],
                                                                             config["export_id"]))
    summary = {"rows": n, "dim": dim, "shards": shards, "shard_rows": SHARD_ROWS, "shards_kept": 0,
               "backbone_images_computed": 0, "export_id": config["export_id"], "encoder": config["encoder"],
               "seconds": 0.0, "images_per_s": None, "synthetic": {"seed": seed, "clusters": clusters}}
    storage.write_json(dst.embeddings_summary, summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new data dir to write")
    parser.add_argument("--n", type=int, default=1_000_000, help="products")
    parser.add_argument("--extractor-from", type=Path, required=True,
                        help="a data dir whose model/extractor/ (and first catalog images) to reuse")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = make(args.out, args.n, args.extractor_from, args.clusters, seed=args.seed)
    print(f"wrote {summary['rows']:,} synthetic {summary['dim']}-d products to {args.out}; "
          f"next: python -m pipeline index --data-dir {args.out}")


if __name__ == "__main__":
    main()
