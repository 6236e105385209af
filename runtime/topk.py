"""Exact top-k by cosine similarity over unit vectors, in bounded memory (the index stage, evaluate, the service)."""

from __future__ import annotations

import numpy as np

BLOCK_SCORES = 1 << 24  # similarities computed at once: 64 MiB of float32, whatever the catalog size


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Return the ids of the k most cosine-similar rows of `vectors` for each query (unit vectors), best first.

    Args:
        vectors: the catalog's unit vectors [N, dim] (a memory map is fine).
        queries: unit vectors [Q, dim].
        k: results per query.
        exclude: per query, one row id that must not be returned (-1 for none).

    Returns:
        Row ids [Q, min(k, N)].
    """
    step = max(1, BLOCK_SCORES // max(1, len(vectors)))
    if len(queries) > step:
        return np.concatenate([exact_top_k(vectors, queries[i:i + step], k,
                                           None if exclude is None else exclude[i:i + step])
                               for i in range(0, len(queries), step)])
    sims = queries @ vectors.T
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        sims[rows, exclude[rows]] = -np.inf
    np.negative(sims, out=sims)
    top = np.argpartition(sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)
    return np.take_along_axis(top, order, axis=1)
