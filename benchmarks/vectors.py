"""The index benchmarks' vectors: synthetic clustered unit vectors, and a pipeline data dir's real embeddings and
raw backbone features."""

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
    from pipeline.catalog.table import read_catalog
    from pipeline.features.cache import FeatureCache
    from runtime.embeddings import load_embeddings
    from runtime.layout import EXTRACTOR_CONFIG, Layout

    layout = Layout(data_dir)
    tuned = load_embeddings(data_dir)
    fingerprint = json.loads((layout.extractor / EXTRACTOR_CONFIG).read_text())["encoder_fingerprint"]
    raw = FeatureCache(layout.features(fingerprint)).get(read_catalog(layout.catalog_csv)["sha256"].tolist())
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    out = []
    order = np.random.default_rng(0).permutation(len(tuned))
    queries, base = order[:n_queries], order[n_queries:]
    for label, vectors in (("fine-tuned", tuned), ("raw backbone", raw)):
        out.append((f"{data_dir.name} {label} N={len(base)} d={vectors.shape[1]}", vectors[base], vectors[queries]))
    return out
