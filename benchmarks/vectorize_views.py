"""Benchmark: vectorize's images/s with multi-crop views cut by `runtime.views` against views inside the MediaPipe
file, on the same catalog, the two taking turns.

Both data dirs hold the same acquired catalog (hard links) and the MediaPipe embedder with six views of half the
side, exported with an untrained head (the head is one small matrix product: it does not change the rate). One
cuts the views in TensorFlow and runs them as a batch (`pipeline.encoders.backbones.with_multicrop` without a
folder for the file), the other writes a TFLite file that cuts and pools them itself (with one, as finetune
does). Both extractors are loaded once first, so that TensorFlow's import counts against neither. Each round
empties both feature caches and embeddings, then runs vectorize on one and then the other, so that both meet the
same load on this shared machine.

    python -m benchmarks.vectorize_views                   # grocery from ../shared, 2 rounds
    python -m benchmarks.vectorize_views --source folders:DIR --rounds 3 --work-dir /tmp/views
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED
from pipeline import acquire, vectorize
from pipeline.encoders.backbones import load_encoder, with_multicrop
from pipeline.training.export import export
from pipeline.training.head import build_head
from runtime import storage
from runtime.extractor import load_extractor
from runtime.layout import FEATURES_DIR, VIEWS_DIR, Layout

WEIGHTS = SHARED / "models" / "mobilenet_v3_small_075_224_embedder.tflite"
MODES = {"cut by runtime.views": False, "inside the file": True}


def prepare(source: str, work: Path, weights: Path, fraction: float) -> dict[str, Path]:
    """Acquire `source` once and make one data dir per mode beside it, sharing the catalog; return them by mode."""
    first = work / "acquired"
    acquire.run(source, first)
    dirs = {}
    for mode, in_file in MODES.items():
        data = work / mode.split()[0]  # "cut" or "inside"
        shutil.rmtree(data, ignore_errors=True)
        storage.link_tree(Layout(first).catalog, Layout(data).catalog)
        (Layout(data).model / VIEWS_DIR).mkdir(parents=True)
        encoder = with_multicrop(load_encoder("mediapipe-embedder", str(weights)), fraction,
                                 Layout(data).model / VIEWS_DIR if in_file else None)
        _, raw_head = build_head(encoder.feature_dim, None, 0)
        export(encoder, raw_head, Layout(data).extractor, {"finetuned": False})
        dirs[mode] = data
    return dirs


def empty(data: Path) -> None:
    """Delete what vectorize keeps between runs (the feature cache, the shards), so each run embeds every image."""
    shutil.rmtree(Layout(data).cache / FEATURES_DIR, ignore_errors=True)
    shutil.rmtree(Layout(data).embeddings, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=f"grocery:{SHARED / 'data' / 'grocery'}", help="a catalog source")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="the MediaPipe embedder's TFLite file")
    parser.add_argument("--multicrop", type=float, default=0.5, help="the views' share of the side (0.5)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, taking turns (2)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data dirs here (default: temporary)")
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        parser.error(f"no MediaPipe embedder at {args.weights} (../shared/models/ has it)")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = prepare(args.source, args.work_dir or Path(tmp), args.weights, args.multicrop)
        for data in dirs.values():  # TensorFlow's import and first graph trace go to no one's account
            extractor = load_extractor(Layout(data).extractor)
            extractor.embed(np.zeros((1, extractor.input_size, extractor.input_size, 3), np.float32))
        rows = 0
        for _ in range(args.rounds):
            for mode, data in dirs.items():
                empty(data)
                summary = vectorize.run(data)
                rates[mode].append(summary["images_per_s"])
                rows = summary["rows"]
    print(f"\nvectorize_views: {rows} images, six views of {args.multicrop:g} of the side, empty feature cache, "
          f"{args.rounds} rounds taking turns, {os.cpu_count()} cores")
    print(f"{'views':24s} images/s")
    for mode, values in rates.items():
        print(f"{mode:24s} {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
