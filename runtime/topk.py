"""Exact top-k: the k best of a row of scores without a full sort (the service's hot path), and by cosine similarity
over unit vectors in bounded memory (the index stage's recall measure, evaluate, benchmarks)."""

from __future__ import annotations

import numpy as np

BLOCK_SCORES = 1 << 24  # similarities computed at once: 64 MiB of float32, whatever the catalog size


def top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k highest scores of each row (the last axis), highest first, without a full sort.

    Equal scores are ordered by `tiebreak` (an array shaped as `scores`), then by position, so the order is the same
    whatever the partition did; which of several scores equal to the k-th one make the cut is the partition's choice.

    Args:
        scores: [N] or [Q, N].
        k: positions wanted per row (all N when k >= N).
        tiebreak: what decides between equal scores, shaped as `scores`.

    Returns:
        [min(k, N)] or [Q, min(k, N)] positions.
    """
    scores = np.asarray(scores)
    n = scores.shape[-1]
    if n > k:
        chosen = np.argpartition(scores, n - k, axis=-1)[..., n - k:]
    else:
        chosen = np.broadcast_to(np.arange(n), scores.shape).copy()
    if scores.ndim == 1:  # one query, the service's hot path: one lexsort of k keys
        keys = (chosen, -scores[chosen]) if tiebreak is None else (chosen, tiebreak[chosen], -scores[chosen])
        return chosen[np.lexsort(keys)]
    chosen = np.sort(chosen, axis=-1)  # k per row: sorted by position, then stably by tiebreak, then by score
    if tiebreak is not None:
        ties = np.take_along_axis(np.asarray(tiebreak), chosen, axis=-1)
        chosen = np.take_along_axis(chosen, np.argsort(ties, axis=-1, kind="stable"), axis=-1)
    best = np.argsort(-np.take_along_axis(scores, chosen, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(chosen, best, axis=-1)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Return the ids of the k most cosine-similar rows of `vectors` for each query (unit vectors), best first.

    Args:
        vectors: the catalog's unit vectors [N, dim] (a memory map is fine).
        queries: unit vectors [Q, dim].
        k: results per query.
        exclude: per query, one row id that must not be returned (-1 for none).

    Returns:
        Row ids [Q, min(k, N)]; equal similarities in id order (`top_k`).
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
    return top_k(sims, k)
