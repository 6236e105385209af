"""Missing demand: the queries whose best score is low, grouped into what shoppers photograph that the catalog
lacks. With the query vectors kept (EVENTS_KEEP_VECTORS) the groups are k-means clusters of the photos
themselves; without, queries are grouped by the closest product the catalog had (their top hit).
"""

from __future__ import annotations

import base64
from collections import Counter

import numpy as np
import pandas as pd

MAX_GROUPS = 12
MIN_GROUP = 3  # queries a cluster is meant to hold at least, on average
ITERATIONS = 25
SEED = 0


def decode_vectors(column: pd.Series) -> np.ndarray | None:
    """The kept query vectors as unit rows (float32), or None when not every query kept one of one length."""
    if column.isna().any() or len(column) == 0:
        return None
    rows = [np.frombuffer(base64.b64decode(text), np.float16) for text in column]
    if len({len(row) for row in rows}) != 1:
        return None  # vectors of two index versions with different encoders
    matrix = np.stack(rows).astype(np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def kmeans(vectors: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """Cluster unit vectors by cosine (spherical k-means, k-means++ start); return each row's cluster."""
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(len(vectors))]]
    for _ in range(1, k):
        distance = np.clip(1.0 - np.max(vectors @ np.stack(centres).T, axis=1), 0.0, None)
        if distance.sum() == 0:
            break
        centres.append(vectors[rng.choice(len(vectors), p=distance / distance.sum())])
    centres = np.stack(centres)
    labels = np.zeros(len(vectors), np.int64)
    for _ in range(ITERATIONS):
        labels = np.argmax(vectors @ centres.T, axis=1)
        updated = np.stack([vectors[labels == c].sum(axis=0) if np.any(labels == c) else centres[c]
                            for c in range(len(centres))])
        updated /= np.maximum(np.linalg.norm(updated, axis=1, keepdims=True), 1e-12)
        if np.allclose(updated, centres, atol=1e-6):
            break
        centres = updated
    return labels


def group(low: pd.DataFrame, max_groups: int = MAX_GROUPS) -> tuple[pd.DataFrame, str]:
    """Group the low-score queries, largest group first.

    Returns:
        A table with one row per group (queries, share of the low ones, share with a click, median best score,
        the top hits most returned with their counts) and how it was grouped ("vectors" or "top hit").
    """
    if low.empty:
        return pd.DataFrame(columns=["group", "queries", "share", "click_share", "best_median", "top_hits"]), "none"
    vectors = decode_vectors(low["vector"])
    if vectors is not None and len(vectors) >= 2 * MIN_GROUP:
        k = max(1, min(max_groups, len(vectors) // MIN_GROUP))
        labels, how = kmeans(vectors, k), "vectors"
    else:
        labels, how = pd.factorize(low["top_hit"].fillna("(no result)"))[0], "top hit"
    frame = low.assign(group=labels)
    rows = []
    for _, members in frame.groupby("group"):
        hits = Counter(members["top_hit"].dropna())
        rows.append({"queries": len(members), "share": len(members) / len(frame),
                     "click_share": float(members["clicked"].mean()), "best_median": float(members["best"].median()),
                     "top_hits": hits.most_common(5)})
    table = pd.DataFrame(rows).sort_values("queries", ascending=False, kind="stable").head(max_groups)
    table.insert(0, "group", range(1, len(table) + 1))
    return table.reset_index(drop=True), how
