"""Benchmark: what one query's embedding costs with each extractor, side by side in one run (a lever's query cost).

Each `--extractor NAME=DIR` (a data dir's `model/extractor`, or an index folder) embeds the same photo as the
service does (Pillow decode, resize to the extractor's input size, embed), the extractors taking turns for
`--rounds` rounds so that the machine's noise falls on all of them alike; prints p50/p99 of each and its ratio to
the first.

    python -m benchmarks.extractor_latency --image photo.jpg \\
        --extractor single=/tmp/grocery1/model/extractor --extractor multicrop=/tmp/grocery/model/extractor
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import percentiles
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_CONFIG, EXTRACTOR_DIR
from service.config import load_config
from service.uploads import decode

LIMITS = load_config({}, environ={})  # the service's default limits, for decoding as a worker does


def named_folder(spec: str) -> tuple[str, Path]:
    """Parse NAME=DIR, DIR being an extractor folder or a folder holding one (an index version)."""
    name, _, folder = spec.partition("=")
    path = Path(folder or name)
    if not (path / EXTRACTOR_CONFIG).is_file() and (path / EXTRACTOR_DIR / EXTRACTOR_CONFIG).is_file():
        path = path / EXTRACTOR_DIR
    return name, path


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractor", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--image", type=Path, required=True, help="the query photo")
    parser.add_argument("--rounds", type=int, default=200, help="queries per extractor (default 200)")
    args = parser.parse_args(argv)
    data = args.image.read_bytes()
    extractors = {name: load_extractor(path) for name, path in map(named_folder, args.extractor)}
    seconds: dict[str, list[float]] = {name: [] for name in extractors}
    for round_ in range(args.rounds + 5):
        for name, extractor in extractors.items():
            started = time.perf_counter()
            pixels = decode(data, LIMITS, extractor.input_size).pixels
            extractor.embed(pixels[None])
            if round_ >= 5:  # the first calls trace graphs and allocate tensors
                seconds[name].append(time.perf_counter() - started)
    first = float(np.percentile(next(iter(seconds.values())), 50))
    print(f"\nextractor_latency: {args.image.name}, {args.rounds} rounds, extractors taking turns")
    for name, extractor in extractors.items():
        config = extractor.config
        print(f"{name:12s} {config['encoder']:40s} input {config['input_size']:4d} multicrop "
              f"{config.get('multicrop') or 0:<4g} {percentiles(seconds[name])}  "
              f"p50 {np.percentile(seconds[name], 50) / first:.2f}x the first")


if __name__ == "__main__":
    main()
