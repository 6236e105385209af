"""The index benchmark's data: synthetic clustered unit vectors, a pipeline data dir's real embeddings, and how
hard each set is for nearest-neighbour search (so synthetic sets can be compared with real ones).

    python scripts/bench_data.py --data-dir /tmp/fs-mediapipe --sizes 1000000
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, seed: int, clusters: int = 1000, spread: float = 0.5,
              labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres, like product embeddings grouped by kind.

    With `labels`, also return each vector's centre (its "category").
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    owner = np.empty(n, np.int64)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        owner[start:start + m] = rng.integers(0, clusters, m)
        out[start:start + m] = centres[owner[start:start + m]] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return (out, owner) if labels else out


def real_datasets(data_dir: Path, n_queries: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The pipeline's fine-tuned embeddings and the raw backbone features of a data dir, split into base/queries."""
    from pipeline.features import FeatureCache
    from pipeline.layout import Layout, read_catalog
    from pipeline.vectorize import load_embeddings

    layout = Layout(data_dir)
    tuned = load_embeddings(data_dir)
    fingerprint = json.loads((layout.extractor / "extractor.json").read_text())["encoder_fingerprint"]
    raw = FeatureCache(layout.features(fingerprint)).get(read_catalog(layout.catalog_csv)["sha256"].tolist())
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    out = []
    order = np.random.default_rng(0).permutation(len(tuned))
    queries, base = order[:n_queries], order[n_queries:]
    for label, vectors in (("fine-tuned", tuned), ("raw backbone", raw)):
        out.append((f"{data_dir.name} {label} N={len(base)} d={vectors.shape[1]}", vectors[base], vectors[queries]))
    return out


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


def main() -> None:
    """Print the difficulty of real and synthetic datasets side by side."""
    import argparse

    parser = argparse.ArgumentParser(description="difficulty of the index benchmark's datasets")
    parser.add_argument("--data-dir", type=Path, action="append", default=[])
    parser.add_argument("--sizes", default="1000000", help="synthetic N values (d=256, the benchmark's seeds)")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    sets = [d for path in args.data_dir for d in real_datasets(path, args.queries)]
    for n in (int(x) for x in args.sizes.split(",") if int(x)):
        vectors = clustered(n + args.queries, 256, seed=256 + n)
        sets.append((f"synthetic clustered N={n:,} d=256", vectors[args.queries:], vectors[:args.queries]))
    for name, base, queries in sets:
        print(f"{name:45s} {difficulty(base, queries)}", flush=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
