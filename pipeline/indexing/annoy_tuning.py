"""How the index stage tunes Annoy on the catalog itself: the smallest search_k that reaches a recall, and whether an
exact scan of every vector is faster (small catalogs)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from runtime.topk import exact_top_k

TARGET_RECALL = 0.99
TUNE_QUERIES = 200
REFINE_STEPS = 3  # bisections after the doubling: search_k within 1/8 of an octave of the smallest
K = 10
STRATEGY_QUERIES = 20  # queries per timing round of `serving_cost`
STRATEGY_ROUNDS = 5
DECISIVE = 10.0  # a scan this many times slower than Annoy is not timed further
EXACT_PREFERENCE = 1.25  # the scan is chosen while it costs at most this many times Annoy's query


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


class ServingCost(NamedTuple):
    """What one query costs by each path, in ms, measured side by side (`serving_cost`)."""

    exact_ms: float
    annoy_ms: float


def serving_cost(index: Any, vectors: np.ndarray, search_k: int, k: int = K, n_queries: int = STRATEGY_QUERIES,
                 rounds: int = STRATEGY_ROUNDS, seed: int = 1) -> ServingCost:
    """Time the exact scan the service would run (one query at a time over every vector) and the Annoy query at
    `search_k`, on the same catalog items as queries.

    One short timing does not hold: the first scan pays page faults and BLAS start-up (8,000 x 256 floats once
    measured 7.8 ms against 0.1 to 0.4 ms warm), so the choice flipped from one build to the next. Here both paths
    are warmed up, then timed in `rounds` interleaved rounds, and each one's median round is its cost. A scan more
    than DECISIVE times slower than Annoy after the warm-up is not timed further: at 10M products a round would
    take minutes, and the answer cannot change.
    """
    sample = _sample(len(vectors), n_queries, seed)
    queries = np.asarray(vectors[sample], np.float32)
    wanted = min(k, len(vectors) - 1)

    def exact(rows: np.ndarray) -> float:
        started = time.perf_counter()
        for query in rows:
            exact_top_k(vectors, query[None], wanted)
        return 1000 * (time.perf_counter() - started) / len(rows)

    def annoy() -> float:
        started = time.perf_counter()
        for query in queries:
            index.get_nns_by_vector(query.tolist(), k, search_k=search_k)
        return 1000 * (time.perf_counter() - started) / len(queries)

    exact(queries[:1])
    annoy_warm = annoy()
    probe = exact(queries[1:2] if len(queries) > 1 else queries)
    if probe > DECISIVE * annoy_warm:
        return ServingCost(round(probe, 3), round(annoy_warm, 3))
    timings = np.array([(exact(queries), annoy()) for _ in range(rounds)])
    median = np.median(timings, axis=0)
    return ServingCost(round(float(median[0]), 3), round(float(median[1]), 3))


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, min(size, n), replace=False)


def choose_strategy(cost: ServingCost | None) -> str:
    """'exact' when scanning every vector costs at most EXACT_PREFERENCE times Annoy's query (small catalogs), else
    'annoy'; 'annoy' without a measurement (a fixed --search-k is not second-guessed).

    The exact scan has recall 1, which is worth a little time; and near the crossover (about ten thousand
    products, docs/benchmarks/) a preference keeps the noise of a busy machine from flipping the choice.
    """
    return "exact" if cost is not None and cost.exact_ms <= EXACT_PREFERENCE * cost.annoy_ms else "annoy"
