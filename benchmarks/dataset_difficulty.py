"""How hard each vector set is for nearest-neighbour search: real embeddings next to the synthetic sets.

Relative contrast and local intrinsic dimension tell whether the synthetic 1M sets of ann_methods are easier or
harder than a real catalog's features (they are harder: LID 59-81 against 17).

    python -m benchmarks.dataset_difficulty --data-dir /tmp/fs-mediapipe --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.vectors import clustered, real_datasets


def difficulty(base: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    """How hard a dataset is for approximate search, from the queries' distances to every base vector.

    relative_contrast: mean distance to the base / distance to the k-th neighbour (lower: harder).
    lid: local intrinsic dimensionality, maximum-likelihood estimate from the k nearest distances (higher:
    harder; it is the dimension the neighbourhoods behave as if they had).
    """
    contrast, lid, nearest, kth = [], [], [], []
    for start in range(0, len(queries), 50):
        sims = queries[start:start + 50] @ base.T
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims))
        knn = np.sort(np.partition(dist, k, axis=1)[:, :k], axis=1) + 1e-9
        contrast += (dist.mean(axis=1) / knn[:, -1]).tolist()
        lid += (-1.0 / np.log(knn[:, :-1] / knn[:, -1:]).mean(axis=1)).tolist()
        nearest += knn[:, 0].tolist()
        kth += knn[:, -1].tolist()
    return {"relative_contrast": round(float(np.mean(contrast)), 2), "lid": round(float(np.mean(lid)), 1),
            "nn1_distance": round(float(np.mean(nearest)), 3), f"nn{k}_distance": round(float(np.mean(kth)), 3)}


def main(argv: list[str] | None = None) -> None:
    """Print the difficulty of real and synthetic datasets side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, action="append", default=[], help="a pipeline data dir (repeatable)")
    parser.add_argument("--sizes", default="1000000", help="synthetic N values (d=256, ann_methods' seeds)")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args(argv)
    sets = [d for path in args.data_dir for d in real_datasets(path, args.queries)]
    for n in (int(x) for x in args.sizes.split(",") if int(x)):
        vectors = clustered(n + args.queries, 256, seed=256 + n)
        sets.append((f"synthetic clustered N={n:,} d=256", vectors[args.queries:], vectors[:args.queries]))
    for name, base, queries in sets:
        print(f"{name:45s} {difficulty(base, queries)}", flush=True)


if __name__ == "__main__":
    main()
