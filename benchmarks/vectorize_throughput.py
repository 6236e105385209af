"""Benchmark: the bare encoder's images/s next to vectorize's on the same images, and backbone passes per image.

The bare encoder runs on images already decoded in memory (the model's own speed); vectorize decodes JPEGs
with tf.data, runs the exported extractor, and writes shards (what a merchandiser waits for). Both are timed
in this one run, bare before and after vectorize, because the machine is shared and noisy.

    python -m benchmarks.vectorize_throughput               # fashion-small + MobileNet from ../shared
    python -m benchmarks.vectorize_throughput --encoder mediapipe-embedder --encoder-weights FILE.tflite --n 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED
from pipeline import acquire, finetune, vectorize
from pipeline.catalog.table import read_catalog
from pipeline.encoders.backbones import load_encoder
from pipeline.training.export import export
from pipeline.training.head import build_head
from runtime.layout import FEATURE_PARTS, SHARD_FILES, Layout
from runtime.preprocess import decode_image


def bare_encoder_rate(encoder: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int) -> float:
    """Images per second of the encoder alone over pre-decoded images."""
    encoder(images[:batch_size].astype(np.float32))  # warm-up: graph tracing, allocation
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        encoder(images[start:start + batch_size].astype(np.float32))
    return len(images) / (time.perf_counter() - started)


def prepare_data_dir(source: str, data: Path, n: int, encoder_name: str, weights: str | None) -> tuple[Any, Any]:
    """Acquire `source` into `data`, keep its first `n` distinct images and export the encoder with a raw head.

    Returns:
        (the encoder, the kept catalog).
    """
    layout = Layout(data)
    acquire.run(source, data)
    catalog = read_catalog(layout.catalog_csv).drop_duplicates("sha256").head(n)
    catalog.to_csv(layout.catalog_csv, index=False)
    encoder = load_encoder(encoder_name, weights)
    _, raw_head = build_head(encoder.feature_dim, None, 0)
    export(encoder, raw_head, layout.extractor, {"finetuned": False})
    return encoder, catalog


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=f"fashion:{SHARED / 'data' / 'fashion-small'}")
    parser.add_argument("--encoder", default="mobilenet-v1-0.25")
    parser.add_argument("--encoder-weights", default=str(SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5"))
    parser.add_argument("--n", type=int, default=2000, help="catalog images to time (default 2000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data dir here (default: temporary)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.work_dir or Path(tmp)
        layout = Layout(data)
        encoder, catalog = prepare_data_dir(args.source, data, args.n, args.encoder, args.encoder_weights)
        n = len(catalog)
        images = np.stack([decode_image(str(layout.catalog / p)).numpy().astype(np.uint8) for p in catalog["image"]])

        bare_before = bare_encoder_rate(encoder, images, args.batch_size)
        started = time.perf_counter()
        summary = vectorize.run(data, batch_size=args.batch_size)
        wall_rate = n / (time.perf_counter() - started)
        vectorize_rate = summary["images_per_s"]  # the embedding loop, after the extractor has loaded
        bare_after = bare_encoder_rate(encoder, images, args.batch_size)
        bare = (bare_before + bare_after) / 2

        # Passes per image over a whole pipeline on a fresh cache: finetune computes, vectorize reuses.
        for part in layout.cache.rglob(FEATURE_PARTS):
            part.unlink()
        for part in layout.embeddings.glob(SHARD_FILES):
            part.unlink()
        tuned = finetune.run(data, encoder=args.encoder, encoder_weights=args.encoder_weights, epochs=5)
        again = vectorize.run(data, batch_size=args.batch_size)
        passes = (tuned["backbone_images_computed"] + again["backbone_images_computed"]) / n

    print(f"\nvectorize_throughput: {n} distinct catalog images, encoder {args.encoder}, batch {args.batch_size}, "
          f"{os.cpu_count()} cores")
    print(f"{'measure':44s} {'images/s':>10s}")
    print(f"{'bare encoder (decoded images, before)':44s} {bare_before:10.1f}")
    print(f"{'bare encoder (decoded images, after)':44s} {bare_after:10.1f}")
    print(f"{'vectorize loop (decode + extractor + shards)':44s} {vectorize_rate:10.1f}")
    print(f"{'vectorize loop / bare encoder':44s} {vectorize_rate / bare:10.2f}x   (goal >= 0.90x)")
    print(f"{'vectorize stage wall, incl. loading the model':44s} {wall_rate:10.1f}   "
          f"({wall_rate / bare:.2f}x; fixed start-up cost, amortised on large catalogs)")
    print(f"{'backbone passes per image, finetune+vectorize':44s} {passes:10.2f}    (goal 1.00)")
    print(f"vectorize computed {summary['backbone_images_computed']} images in its own run")


if __name__ == "__main__":
    main()
