"""The index stage's search_k: the smallest measured that reaches the target recall, by doubling then bisecting."""

from __future__ import annotations

import numpy as np
from annoy import AnnoyIndex

from pipeline.indexing.annoy_tuning import REFINE_STEPS, tune_search_k


def test_search_k_is_refined_below_the_first_doubling_that_reaches_the_target() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = AnnoyIndex(32, "angular")
    for i, vector in enumerate(vectors):
        index.add_item(i, vector)
    index.build(4)
    chosen, table = tune_search_k(index, vectors, 4, target=0.9, n_queries=100)
    assert table[-1]["search_k"] == chosen and table[-1]["recall_at_10"] >= 0.9
    assert [row["search_k"] for row in table] == sorted(row["search_k"] for row in table)
    assert all(row["recall_at_10"] < 0.9 for row in table[:-1])  # nothing smaller that was measured reaches it
    doublings = {40 * 2**j for j in range(20)}  # k x trees, doubled
    measured = [row["search_k"] for row in table]
    bisections = [s for s in measured if s not in doublings]
    assert 1 <= len(bisections) <= REFINE_STEPS  # between the last doubling below the target and the first above
    assert max(s for s in measured if s in doublings) * 2 > chosen
