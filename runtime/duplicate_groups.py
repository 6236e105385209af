"""Near-duplicate products: groups of products whose embeddings are nearly identical (the same photo re-shot,
re-encoded, resized or slightly cropped, or the same item listed twice).

A product's embedding is the normalised mean of its images' vectors (what "more like this" queries with).
Products are grouped greedily in catalog order: the first product not yet in a group starts one, and every
later product not yet in a group whose cosine similarity to it is at least the threshold joins it, so each
member is within the threshold of its group's first product, whatever the other members. The index stage
stores the group of every product (`duplicates.npy`: the product number of its group's first; its own number
when alone), which the service's `collapse=true` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import artifacts, storage
from runtime.artifacts import ArtifactError
from runtime.items import flatten_items
from runtime.layout import DUPLICATES_FILE

BLOCK = 1024  # products compared with the whole catalog at once: BLOCK x products float32 in memory


def product_vectors(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each product's unit embedding from per-image vectors stored product after product.

    Args:
        vectors: unit vectors [N, dim], product 0's images first, then product 1's, and so on.
        counts: images per product [P] (summing to N).
    """
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) == len(counts):
        return vectors
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(vectors, starts, axis=0) if len(vectors) else np.zeros((0, vectors.shape[1]), np.float32)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def index_product_vectors(folder: Path, manifest: dict, items: list[dict]) -> np.ndarray:
    """Each product's unit embedding in an index folder, from its image vectors and items (`product_vectors`)."""
    counts, flat = flatten_items(items)
    return product_vectors(artifacts.load_vectors(folder, manifest)[flat], counts)


def group_count(first: np.ndarray) -> int:
    """How many groups of `find_groups`'s answer hold more than one product."""
    return int((np.bincount(first) > 1).sum()) if len(first) else 0


def find_groups(vectors: np.ndarray, threshold: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Group products by comparing every pair exactly: the reference that `group_pairs` reproduces from candidate
    pairs (the index stage's way, `pipeline.indexing.duplicate_search`). Costs P x P similarities, `block` rows at
    a time.

    Args:
        vectors: one unit vector per product [P, dim].
        threshold: the cosine similarity from which a product joins a group (0 to 1).
        block: rows compared at once.

    Returns:
        (first [P]: the product number of each product's group's first, its own when alone; similarity [P] to
        that first, 1 for the first itself).

    Raises:
        ValueError: a threshold outside (0, 1].
    """
    check_threshold(threshold)
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors)
    first = np.full(n, -1, np.int64)
    similarity = np.ones(n, np.float32)
    for start in range(0, n, block):
        sims = vectors[start:start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)  # row-major: each row's columns are one run
        bounds = np.searchsorted(rows, np.arange(len(sims) + 1))
        for row in np.flatnonzero(np.diff(bounds)):
            p = start + int(row)
            if first[p] >= 0:  # already joined an earlier product's group
                continue
            members = cols[bounds[row]:bounds[row + 1]]
            members = members[(first[members] < 0) & (members > p)]
            first[p] = p
            first[members] = p
            similarity[members] = sims[row, members]
        alone = np.flatnonzero(first[start:start + block] < 0) + start  # not even similar to itself: a zero vector
        first[alone] = alone
    return first, similarity


def group_pairs(n: int, a: np.ndarray, b: np.ndarray, similarity: np.ndarray, threshold: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Group n products greedily from the pairs known to be similar: `find_groups`'s answer when the pairs hold
    every pair at or above `threshold`.

    Products are taken in catalog order: the first not yet in a group starts one, and every later product not
    yet in a group that is paired with it at `threshold` or more joins it.

    Args:
        n: products.
        a, b: the pairs' product numbers (either order; a pair may repeat).
        similarity: each pair's exact cosine similarity.
        threshold: the cosine similarity from which a product joins a group (0 to 1].

    Returns:
        (first [n], similarity [n]) as `find_groups` returns them.
    """
    check_threshold(threshold)
    keep = np.asarray(similarity) >= threshold
    low, high = np.minimum(a, b)[keep].astype(np.int64), np.maximum(a, b)[keep].astype(np.int64)
    sims = np.asarray(similarity, np.float32)[keep]
    keep = low != high
    low, high, sims = low[keep], high[keep], sims[keep]
    order = np.lexsort((high, low))
    low, high, sims = low[order], high[order], sims[order]
    first = np.full(n, -1, np.int64)
    out = np.ones(n, np.float32)
    starts = np.flatnonzero(np.concatenate([[True], low[1:] != low[:-1]])) if len(low) else np.zeros(0, np.int64)
    for begin, end in zip(starts.tolist(), np.append(starts[1:], len(low))[:len(starts)].tolist(), strict=True):
        p = int(low[begin])
        if first[p] >= 0:  # already joined an earlier product's group
            continue
        members, member_sims = high[begin:end], sims[begin:end]
        free = first[members] < 0
        first[p] = p
        first[members[free]] = p
        out[members[free]] = member_sims[free]
    alone = np.flatnonzero(first < 0)
    first[alone] = alone
    return first, out


def check_threshold(threshold: float) -> None:
    """Refuse a near-duplicate threshold that is not a cosine similarity in (0, 1].

    Raises:
        ValueError: with the value given.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold is a cosine similarity in (0, 1], got {threshold}")


def write_groups(first: np.ndarray, path: Path) -> int:
    """Write each product's near-duplicate group (`first`, as `group_pairs` answers) to `path` as an index stores
    it; return how many groups have more than one product."""
    np.save(path, np.asarray(first, np.int32))
    storage.make_readable(path)
    return group_count(first)


def read_groups(folder: Path, manifest: dict) -> np.ndarray | None:
    """The near-duplicate group of each product of an index folder, or None when it was built without them."""
    path = Path(folder) / DUPLICATES_FILE
    if DUPLICATES_FILE not in manifest.get("files", {}):
        return None
    groups = np.load(path)
    if groups.shape != (manifest["products"],):
        raise ArtifactError(f"{path}: {groups.shape} groups for {manifest['products']} products")
    return groups
