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

from runtime import storage
from runtime.artifacts import ArtifactError
from runtime.layout import DUPLICATES_FILE, VECTORS_FILE
from runtime.products import flatten

# The default threshold: the lowest at which >= 90% of grouped products share their group's first's colour and
# article type (0.935), on fashion-small with the MediaPipe embedder (`python -m benchmarks.duplicate_threshold`,
# README "Near-duplicates"); at 0.95 a group already mixes colours of one style.
DEFAULT_THRESHOLD = 0.985
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


def index_product_vectors(folder: Path, items: list[dict]) -> np.ndarray:
    """Each product's unit embedding in an index folder, from its `vectors.npy` and items (`product_vectors`)."""
    counts, flat = flatten([image["id"] for image in item["images"]] for item in items)
    return product_vectors(np.load(Path(folder) / VECTORS_FILE, mmap_mode="r")[flat], counts)


def group_count(first: np.ndarray) -> int:
    """How many groups of `find_groups`'s answer hold more than one product."""
    return int((np.bincount(first) > 1).sum()) if len(first) else 0


def find_groups(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD, block: int = BLOCK
                ) -> tuple[np.ndarray, np.ndarray]:
    """Group products whose unit vectors are within `threshold` cosine similarity of their group's first.

    Every pair is compared exactly, `block` rows at a time (50,000 products: about 10 s on 2 cores).

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
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold is a cosine similarity in (0, 1], got {threshold}")
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors)
    first = np.full(n, -1, np.int64)
    similarity = np.ones(n, np.float32)
    for start in range(0, n, block):  # no progress bar: the service imports this module, and tqdm is the pipeline's
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


def write_groups(vectors: np.ndarray, product_of: np.ndarray, path: Path, threshold: float) -> int:
    """Write each product's near-duplicate group to `path` as an index stores it; return how many groups have
    more than one product.

    Args:
        vectors: the index's image vectors [N, dim].
        product_of: each image's product number [N] (0..P-1, numbered as items.jsonl numbers them).
        path: the .npy file to write.
        threshold: the cosine similarity from which products are near-duplicates.
    """
    order = np.argsort(product_of, kind="stable")  # images product after product, as product_vectors wants them
    counts = np.bincount(product_of) if len(product_of) else np.zeros(0, np.int64)
    first, _ = find_groups(product_vectors(np.asarray(vectors)[order], counts), threshold)
    np.save(path, first.astype(np.int32))
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
