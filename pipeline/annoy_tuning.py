"""How the index stage tunes Annoy on the catalog itself: the smallest search_k that reaches a recall, and whether an
exact scan of every vector is faster (small catalogs)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from runtime.topk import exact_top_k

TARGET_RECALL = 0.99
TUNE_QUERIES = 200
REFINE_STEPS = 3  # bisections after the doubling: search_k within 1/8 of an octave of the smallest
K = 10


def tune_search_k(index: Any, vectors: np.ndarray, trees: int, k: int = K, target: float = TARGET_RECALL,
                  n_queries: int = TUNE_QUERIES, seed: int = 0) -> tuple[int, list[dict]]:
    """Measure recall@k against exact search for growing search_k; return the smallest that reaches `target`, and
    the measurements up to it (the chosen one last).

    search_k doubles from k x trees until the target is reached, then `REFINE_STEPS` bisections between the last
    two values narrow it down: doubling alone overshoots by up to 2x, and query time follows search_k (at 10M
    products the difference between two doublings is the difference between meeting the latency target and not,
    docs/performance-and-scale.md). Queries are catalog items (their own id excluded from both answers), so the
    figure needs no extra data.
    """
    n = len(vectors)
    sample = _sample(n, n_queries, seed)
    truth = exact_top_k(vectors, vectors[sample], k, exclude=sample)
    measured: dict[int, dict] = {}

    def reaches(search_k: int) -> bool:
        hits, started = 0, time.perf_counter()
        for row, item in enumerate(sample):
            found = [j for j in index.get_nns_by_item(int(item), k + 1, search_k=search_k) if j != item][:k]
            hits += len(set(found) & set(truth[row].tolist()))
        elapsed = time.perf_counter() - started
        recall = hits / (len(sample) * min(k, n - 1)) if n > 1 else 1.0
        measured[search_k] = {"search_k": search_k, "recall_at_10": round(recall, 4),
                              "ms_per_query": round(1000 * elapsed / len(sample), 3)}
        return recall >= target

    search_k = k * trees
    passed = reaches(search_k)
    while not passed and search_k < n * trees:
        search_k *= 2
        passed = reaches(search_k)
    if passed and search_k > k * trees:
        low = search_k // 2  # measured, below the target
        for _ in range(REFINE_STEPS):
            middle = (low + search_k) // 2
            if middle in (low, search_k):
                break
            if reaches(middle):
                search_k = middle
            else:
                low = middle
    return search_k, [measured[s] for s in sorted(measured) if s <= search_k]


def exact_ms_per_query(vectors: np.ndarray, k: int = K, n_queries: int = 20, seed: int = 1) -> float:
    """Time the exact scan that the service would run (one query at a time, all vectors), in ms per query."""
    sample = _sample(len(vectors), n_queries, seed)
    started = time.perf_counter()
    for item in sample:
        exact_top_k(vectors, vectors[item][None], min(k, len(vectors) - 1))
    return round(1000 * (time.perf_counter() - started) / len(sample), 3)


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, min(size, n), replace=False)


def choose_strategy(table: list[dict], exact_ms: float) -> str:
    """'exact' when scanning every vector is faster than Annoy at the chosen search_k (small catalogs), else 'annoy'.

    The exact scan always has recall 1; below about ten thousand products it is also the faster of the two
    (docs/benchmarks/), so the service uses it there.
    """
    return "exact" if table and exact_ms < table[-1]["ms_per_query"] else "annoy"


