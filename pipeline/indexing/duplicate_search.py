"""Near-duplicate products through the index's own Annoy trees: candidate pairs checked exactly, in O(P log P),
and a threshold calibrated from the index's own data.

Comparing every pair of products (`runtime.duplicate_groups.find_groups`) costs P x P similarities: hours at 1M
products. Here each product asks the Annoy index the stage has just built for its nearest images; the products
of those images are its candidates, each one's cosine similarity is computed exactly from the vectors, and the
pairs at or above the threshold are grouped as `find_groups` groups them (`runtime.duplicate_groups.group_pairs`). A
product whose every neighbour returned is still within the threshold asks again for four times as many.

The threshold is chosen per index (`calibrate`): embeddings of one catalog may spread over the whole sphere
(a head trained on many classes) or sit in a narrow cone (an auto-encoder's), so one absolute cosine cannot
mean "the same item" for both. Distances are measured against the catalog's own scale, the median distance
from a product to its nearest other product, and a group that would swallow a large share of the catalog
raises the threshold until none does. docs/near-duplicates.md has the measurements behind both rules.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime import artifacts
from runtime.duplicate_groups import check_threshold, group_pairs, product_vectors
from runtime.items import flatten_items
from runtime.products import image_table

log = logging.getLogger(__name__)

NEIGHBOURS = 8  # images asked per product at first (docs/near-duplicates.md: reproduction against all pairs)
MAX_NEIGHBOURS = 4096  # a product within the threshold of more than this many is left with these
CALIBRATION_SAMPLE = 20_000  # products whose nearest other product sets the catalog's scale
# the largest factor at which >= 90% of grouped products share colour and type on fashion-small, grocery and the demo
DISTANCE_FACTOR = 0.07
MIN_THRESHOLD, MAX_THRESHOLD = 0.9, 0.99999  # the calibrated threshold's bounds; the top still groups copies
MAX_GROUP_SHARE = 0.01  # no group may hold more than this share of the products ...
MIN_GROUP_CAP = 20  # ... or this many, whichever is larger
CHUNK = 2048  # products per task of the thread pool
MARGIN = 1e-4  # Annoy's float32 distances decide nothing near the threshold: its candidates are checked exactly


class Neighbours:
    """Candidate near neighbours of each product from an Annoy index over image rows, with exact similarities.

    Args:
        annoy: the index's Annoy index over its N images.
        vectors: the products' unit vectors [P, dim]: the image rows themselves when every product has one image
            (then `image_product` is None and image i is product i), else each product's normalised mean.
        image_product: each image's product number [N], or None when image i is product i.
        search_k_per: Annoy nodes inspected per image asked; default its trees, Annoy's own default (fewer missed
            groups of random 32-d data that reach 0.97 similarity: tests/test_near_duplicates.py).
        workers: threads querying Annoy at once (it releases the GIL); default one per core.
    """

    def __init__(self, annoy: Any, vectors: np.ndarray, image_product: np.ndarray | None = None,
                 search_k_per: int | None = None, workers: int | None = None) -> None:
        self.annoy, self.vectors, self.image_product = annoy, vectors, image_product
        self.search_k_per = search_k_per or annoy.get_n_trees()
        self.workers = workers or os.cpu_count() or 1

    def _ask(self, p: int, n: int) -> tuple[list[int], list[float]]:
        """Annoy's n nearest images of product p and their angular distances."""
        search_k = n * self.search_k_per
        if self.image_product is None:
            return self.annoy.get_nns_by_item(p, n, search_k=search_k, include_distances=True)
        return self.annoy.get_nns_by_vector(self.vectors[p].tolist(), n, search_k=search_k, include_distances=True)

    def _candidates(self, p: int, floor: float, n: int) -> tuple[np.ndarray, int]:
        """Product p's candidates at `floor` or above (by Annoy's distances, loosened by MARGIN), and the number
        of images asked; widens while the farthest image returned is still within reach."""
        # a product's mean can be nearer than any of its images: reach further among images for other products
        reach = 1 - (1 - floor) * (1 if self.image_product is None else 4) - MARGIN
        limit = math.sqrt(max(2 - 2 * reach, 0.0))  # Annoy's angular distance: sqrt(2 - 2 cos)
        ids, dists, n = self._widening(p, n, lambda ids, dists: bisect.bisect_right(dists, limit) < len(ids))
        return self._others(p, ids[:bisect.bisect_right(dists, limit)]), n

    def _widening(self, p: int, n: int, enough: Callable[[list[int], list[float]], bool]
                  ) -> tuple[list[int], list[float], int]:
        """Ask for n images, then 4x as many, until `enough` says so, Annoy has no more, or MAX_NEIGHBOURS."""
        while True:
            ids, dists = self._ask(p, n)
            if enough(ids, dists) or len(ids) < n or n >= MAX_NEIGHBOURS:
                return ids, dists, n
            n = min(n * 4, MAX_NEIGHBOURS)

    def _others(self, p: int, ids: list[int]) -> np.ndarray:
        """The products of these images, product p left out."""
        found = np.asarray(ids, np.int64)
        if self.image_product is not None:
            found = np.unique(self.image_product[found])
        return found[found != p]

    def nearest_other(self, products: np.ndarray) -> np.ndarray:
        """Each product's exact cosine similarity to its most similar other product among Annoy's candidates."""
        def task(chunk: np.ndarray) -> np.ndarray:
            out = np.full(len(chunk), np.nan, np.float32)
            for j, p in enumerate(chunk.tolist()):
                # a product's own images may fill the answer: ask further until another product shows
                ids, _, _ = self._widening(p, NEIGHBOURS, lambda ids, _dists, p=p: len(self._others(p, ids)) > 0)
                others = self._others(p, ids)
                if len(others):
                    out[j] = float(np.max(np.asarray(self.vectors[np.sort(others)]) @ self.vectors[p]))
            return out

        with ThreadPoolExecutor(self.workers) as pool:
            parts = list(pool.map(task, np.array_split(products, max(1, math.ceil(len(products) / CHUNK)))))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def pairs(self, floor: float, neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Every candidate pair of products at cosine similarity `floor` or more, similarity computed exactly.

        Returns:
            (a, b, similarity) of the pairs (a < b is not implied; a pair may appear twice), and counts: products
            that widened their query, products left at MAX_NEIGHBOURS.
        """
        n_products = len(self.vectors)

        def task(chunk: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int, int]:
            a, b, s, widened, capped = [], [], [], 0, 0
            for p in chunk.tolist():
                found, asked = self._candidates(p, floor, neighbours)
                widened += asked > neighbours
                capped += asked >= MAX_NEIGHBOURS
                if len(found):
                    found = np.sort(found)  # ascending reads of a memory map
                    sims = np.asarray(self.vectors[found], np.float32) @ np.asarray(self.vectors[p], np.float32)
                    keep = sims >= floor
                    if keep.any():
                        a.append(np.full(int(keep.sum()), p, np.int64))
                        b.append(found[keep])
                        s.append(sims[keep])
            return a, b, s, widened, capped

        a_parts, b_parts, s_parts, widened, capped = [], [], [], 0, 0
        chunks = np.array_split(np.arange(n_products), max(1, math.ceil(n_products / CHUNK)))
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=n_products, desc="near-duplicates", unit="product", disable=None, mininterval=1.0) as bar:
            for chunk, (a, b, s, w, c) in zip(chunks, pool.map(task, chunks), strict=True):
                a_parts += a
                b_parts += b
                s_parts += s
                widened, capped = widened + w, capped + c
                bar.update(len(chunk))
        if capped:
            log.warning("near-duplicates: %d product(s) have more than %d images within similarity %.5f; their "
                        "groups take the nearest %d", capped, MAX_NEIGHBOURS, floor, MAX_NEIGHBOURS)

        def join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return (join(a_parts, np.int64), join(b_parts, np.int64), join(s_parts, np.float32),
                {"widened": widened, "capped": capped})


def over_images(annoy: Any, images: np.ndarray, image_product: np.ndarray) -> Neighbours:
    """The candidate search over products from Annoy over their images: the image rows themselves when each
    product has one image (image i is product i), else each product's normalised mean.

    Args:
        annoy: the Annoy index over the images.
        images: the image vectors [N, dim] (a memory map is fine).
        image_product: each image's product number [N].
    """
    image_product = np.asarray(image_product, np.int64)
    if len(images) == (int(image_product.max()) + 1 if len(image_product) else 0) and \
            (image_product == np.arange(len(image_product))).all():
        return Neighbours(annoy, images)
    order = np.argsort(image_product, kind="stable")  # images product after product, as product_vectors wants them
    return Neighbours(annoy, product_vectors(np.asarray(images)[order], np.bincount(image_product)), image_product)


def of_index(folder: Path, manifest: dict, items: list[dict]) -> Neighbours:
    """The candidate search over the products of a built index folder (its Annoy index, vectors and items)."""
    counts, flat = flatten_items(items)
    annoy = artifacts.load_annoy(folder, manifest)
    images = artifacts.load_vectors(folder, manifest, annoy)
    return over_images(annoy, images, image_table(counts, flat, len(images))[0])


def calibrate(nearest: np.ndarray, factor: float = DISTANCE_FACTOR) -> tuple[float, dict]:
    """The threshold for a catalog whose sampled products' nearest other products are `nearest` similar.

    Products closer than `factor` times the median distance (1 - cosine) from a product to its nearest other
    product are near-duplicates, within [MIN_THRESHOLD, MAX_THRESHOLD].
    """
    nearest = nearest[np.isfinite(nearest)]
    median = float(np.median(nearest)) if len(nearest) else 0.0
    threshold = float(np.clip(1 - factor * (1 - median), MIN_THRESHOLD, MAX_THRESHOLD))
    return round(threshold, 6), {"rule": f"1 - {factor} x (1 - median similarity of a product to its nearest other "
                                         f"product), within [{MIN_THRESHOLD}, {MAX_THRESHOLD}]",
                                 "sample": len(nearest), "median_nearest_similarity": round(median, 6),
                                 "factor": factor}


def group_cap(products: int) -> int:
    """The most products one group may hold before a calibrated threshold is raised."""
    return max(MIN_GROUP_CAP, int(MAX_GROUP_SHARE * products))


def find(neighbours: Neighbours, threshold: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Group the products of an index into near-duplicate groups.

    Args:
        neighbours: the index's candidate search.
        threshold: a fixed cosine similarity; None calibrates it from the index (`calibrate`) and raises it while
            a group holds more than `group_cap` products.
        seed: the calibration sample's.

    Returns:
        (first [P], similarity [P]) as `runtime.duplicate_groups.find_groups` returns them, and how they were found:
        threshold, how it was chosen, pairs, largest group, seconds.

    Raises:
        ValueError: a threshold outside (0, 1].
    """
    started = time.perf_counter()
    n = len(neighbours.vectors)
    info: dict[str, Any] = {}
    if threshold is None:
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, CALIBRATION_SAMPLE), replace=False))
        threshold, info["calibration"] = calibrate(neighbours.nearest_other(sample))
    check_threshold(threshold)
    a, b, sims, counts = neighbours.pairs(threshold)
    first, similarity = group_pairs(n, a, b, sims, threshold)
    largest = _largest(first)
    if "calibration" in info:
        raised = []
        while largest > group_cap(n) and threshold < MAX_THRESHOLD:
            raised.append({"threshold": threshold, "largest_group": largest})
            threshold = round(min(MAX_THRESHOLD, 1 - (1 - threshold) / 2), 6)  # half the distance
            first, similarity = group_pairs(n, a, b, sims, threshold)
            largest = _largest(first)
        info["calibration"].update(raised=raised, group_cap=group_cap(n))
        if raised:
            log.info("near-duplicates: threshold raised to %s: at %s a group held %d of %d products", threshold,
                     raised[0]["threshold"], raised[0]["largest_group"], n)
    info.update(threshold=threshold, method="Annoy candidates checked exactly", neighbours=NEIGHBOURS,
                search_k_per_neighbour=neighbours.search_k_per, candidate_pairs=len(a), largest_group=largest,
                products_in_groups=int((np.bincount(first, minlength=n)[first] > 1).sum()) if n else 0,
                seconds=round(time.perf_counter() - started, 2), **counts)
    return first, similarity, info


def _largest(first: np.ndarray) -> int:
    return int(np.bincount(first).max()) if len(first) else 0
