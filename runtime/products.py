"""Search that answers products, not images: a product's images are scored together and it is returned once.

The Annoy index and its vectors hold one row per image (dense image ids); `items.jsonl` holds one line per
product, listing its image ids. A query's nearest images name candidate products; every image of each candidate
is scored exactly, and a product's score is its images' maximum, mean or their mix (`SCORINGS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from runtime.artifacts import ArtifactError
from runtime.topk import top_k

SCORINGS = ("max", "mean", "mix")
DEFAULT_SCORING = "mix"  # the best scoring on grocery's shelf photos (docs/quality.md, "Several images per product")
EXACT_FILTER_BELOW = 2_000  # a filter matching fewer products is answered by an exact scan of their images
WIDEN = 4  # each Annoy retry fetches this many times more images
MULTI_IMAGE_OVERFETCH = 2  # with several images per product, Annoy is first asked for twice the images
GATHER_BELOW = 1_000  # fewer candidate products: their images are gathered product by product


class Hit(NamedTuple):
    """One ranked product: its dense product number, its score and the id of its best-matching image."""

    product: int
    score: float
    image: int


def image_table(counts: np.ndarray, flat: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (image -> product [N], offsets [P + 1] into `flat`) from each product's image count and the ids.

    Raises:
        ArtifactError: an image id out of range, listed twice, or not listed at all.
    """
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if len(flat) != n_images or offsets[-1] != n_images or (n_images and (flat.min() < 0 or flat.max() >= n_images)):
        raise ArtifactError(f"the products list {len(flat)} image ids for {n_images} images, or ids out of range")
    image_product = np.full(n_images, -1, np.int32)
    image_product[flat] = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    if n_images and (image_product < 0).any():
        raise ArtifactError("an image id is listed by two products and another by none")
    return image_product, offsets


def aggregate(image_ids: np.ndarray, scores: np.ndarray, image_product: np.ndarray, scoring: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score products from their images' scores; return (products, scores, best image ids), best product first.

    For `mean` and `mix`, `image_ids` must hold every image of each product it touches.
    """
    products = image_product[image_ids]
    order = np.lexsort((-scores, products))  # by product, best image first within it
    products, scores, image_ids = products[order], scores[order], image_ids[order]
    starts = np.flatnonzero(np.concatenate([[True], products[1:] != products[:-1]])) if len(products) else order
    best = scores[starts]
    if scoring == "max":
        value = best
    elif scoring in ("mean", "mix"):
        mean = np.add.reduceat(scores, starts) / np.diff(np.append(starts, len(scores))) if len(starts) else best
        value = mean if scoring == "mean" else (best + mean) / 2
    else:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    rank = np.argsort(-value, kind="stable")
    return products[starts][rank], value[rank], image_ids[starts][rank]


class ProductSearch:
    """Rank products for a query vector over per-image vectors and an Annoy index of the same rows.

    Args:
        vectors: unit vectors, one row per image [N, dim] (a memory map is fine).
        counts: each product's number of images; flat: their image ids, product after product (`runtime.items.flatten`).
        annoy: the Annoy index over the N images (None: always exact).
        search_k: Annoy's nodes per query; n_trees: its trees (a wider query inspects n * n_trees nodes).
        exact: scan every image instead of asking Annoy (the index stage measured it faster).
        scoring: how a product's image scores combine, one of `SCORINGS`.
        removed: product numbers never to return (a delta version's removed products): they stay in the vectors
            and in Annoy, and are left out of every result.
    """

    def __init__(self, vectors: np.ndarray, counts: np.ndarray, flat: np.ndarray, annoy: Any = None,
                 search_k: int = -1, n_trees: int = 1, exact: bool = False, scoring: str = DEFAULT_SCORING,
                 removed: np.ndarray | None = None) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.vectors, self.annoy, self.search_k, self.n_trees = vectors, annoy, search_k, n_trees
        self.exact, self.scoring = exact or annoy is None, scoring
        self.image_product, self.offsets = image_table(counts, flat, len(vectors))
        self.images = flat
        self.n_products = len(self.offsets) - 1
        self.one_image_each = len(vectors) == self.n_products  # a product's score is its image's: no aggregation
        self.removed: np.ndarray | None = None  # bool per product, only when some are removed
        self.n_removed = 0
        if removed is not None and len(removed):
            self.removed = np.zeros(self.n_products, bool)
            self.removed[np.asarray(removed, np.int64)] = True
            self.n_removed = int(self.removed.sum())

    def images_of(self, products: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every image id of the given products."""
        parts = [self.images[self.offsets[p]:self.offsets[p + 1]] for p in products]
        return np.concatenate(parts) if parts else np.empty(0, np.int32)

    def product_vector(self, product: int) -> np.ndarray:
        """A product's query vector: the normalised mean of its images' vectors ("more like this")."""
        mean = np.asarray(self.vectors[np.sort(self.images_of([product]))], np.float32).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def search(self, vector: np.ndarray, k: int, mask: np.ndarray | None = None, exclude: int | None = None,
               exact: bool | None = None) -> list[Hit]:
        """Return up to k products, best first, each once; exactly k whenever k products are allowed.

        Args:
            vector: the query's unit vector.
            k: products wanted.
            mask: boolean per product: those allowed (a metadata filter); None allows all.
            exclude: a product never to return (the one a "more like this" query starts from).
            exact: force (True) or forbid (False) the exact scan; None: as measured at build, or for a narrow mask.
        """
        allowed = None  # every product: no per-query array of the catalog's size on the hot path
        removed = self.removed
        if exclude is not None and removed is not None and removed[exclude]:
            exclude = None  # already left out
        n_allowed = self.n_products - self.n_removed - (exclude is not None)
        if mask is not None:
            allowed = mask & ~removed if removed is not None else mask.copy()
            if exclude is not None:
                allowed[exclude] = False
            n_allowed = int(allowed.sum())
        wanted = min(k, n_allowed)
        if wanted == 0:
            return []
        narrow = mask is not None and n_allowed <= EXACT_FILTER_BELOW
        if exact or (exact is None and (self.exact or narrow)):
            if allowed is None and exclude is None and removed is None:
                return self._rank_all(vector, wanted)
            return self._rank(self._allowed(allowed, exclude), vector, wanted)
        n_images = len(self.vectors)
        spread = MULTI_IMAGE_OVERFETCH if n_images > self.n_products else 1  # mix and mean look past the best image
        n = math.ceil(wanted * n_images / n_allowed * (1.5 if mask is not None else 1) * spread) + (exclude is not None)
        while True:
            ids = self.annoy.get_nns_by_vector(vector, n, search_k=max(self.search_k, n * self.n_trees))
            products = np.unique(self.image_product[np.asarray(ids, np.int64)])
            if allowed is not None:
                products = products[allowed[products]]
            else:
                products = products[products != exclude]
                if removed is not None:
                    products = products[~removed[products]]
            if len(products) >= wanted or n >= n_images:
                return self._rank(products if len(products) >= wanted else self._allowed(allowed, exclude), vector,
                                  wanted)
            n = min(n_images, n * WIDEN)

    def _allowed(self, allowed: np.ndarray | None, exclude: int | None) -> np.ndarray:
        """The allowed product numbers: the mask's, or every product but `exclude` and the removed ones."""
        if allowed is not None:
            return np.flatnonzero(allowed)
        everything = np.arange(self.n_products) if self.removed is None else np.flatnonzero(~self.removed)
        return everything if exclude is None else everything[everything != exclude]

    def _rank_all(self, vector: np.ndarray, k: int) -> list[Hit]:
        """`_rank` over every product: one product of the whole matrix and nothing of the catalog's size besides
        (an unfiltered search; each temporary array of the catalog's length costs a cold cache here)."""
        return self._best(None, np.asarray(np.asarray(self.vectors) @ vector, np.float32), k)

    def _rank(self, products: np.ndarray, vector: np.ndarray, k: int) -> list[Hit]:
        """Score every image of `products` exactly and return the k best products."""
        if len(products) > GATHER_BELOW:  # many products: one pass over the image -> product map
            chosen = np.zeros(self.n_products, bool)
            chosen[products] = True
            ids = np.flatnonzero(chosen[self.image_product])
        else:
            ids = np.sort(self.images_of(products))  # ascending reads of the memory-mapped vectors
        if len(ids) > len(self.vectors) // 2:  # scoring every row beats copying most of them out of the map first
            scores = np.asarray(np.asarray(self.vectors) @ vector, np.float32)[ids]
        else:
            scores = np.asarray(self.vectors[ids] @ vector, np.float32)
        return self._best(ids, scores, k)

    def _best(self, ids: np.ndarray | None, scores: np.ndarray, k: int) -> list[Hit]:
        """The k best products from the scores of the images `ids` (None: every image, in id order)."""
        if not self.one_image_each:
            every = np.arange(len(scores)) if ids is None else ids
            return hits(*aggregate(every, scores, self.image_product, self.scoring), k)
        products = self.image_product if ids is None else self.image_product[ids]
        top = top_k(scores, k, tiebreak=products)  # ties: as `aggregate`, by product
        return hits(products[top], scores[top], top if ids is None else ids[top], k)


def hits(products: np.ndarray, scores: np.ndarray, images: np.ndarray, k: int) -> list[Hit]:
    """The first k of ranked (product, score, best image) arrays as Hits of Python numbers."""
    return [Hit(*row) for row in zip(products[:k].tolist(), np.asarray(scores[:k], np.float64).tolist(),
                                     images[:k].tolist(), strict=True)]


class CombinedSearch:
    """A full version's products and a delta's added ones ranked as one catalog: products 0..P-1 are the base's
    (`base`, with the delta's removed products left out), P..P+A-1 the delta's (`added`, always scanned exactly:
    a delta is small). Same `search` and `product_vector` as `ProductSearch`, over the P + A numbers."""

    def __init__(self, base: ProductSearch, added: ProductSearch | None = None) -> None:
        self.base, self.added = base, added
        self.offset = base.n_products
        self.n_products = base.n_products + (added.n_products if added is not None else 0)

    def product_vector(self, product: int) -> np.ndarray:
        """A product's "more like this" vector, from whichever side holds it."""
        if product < self.offset:
            return self.base.product_vector(product)
        return self.added.product_vector(product - self.offset)

    def search(self, vector: np.ndarray, k: int, mask: np.ndarray | None = None, exclude: int | None = None,
               exact: bool | None = None) -> list[Hit]:
        """The k best products of both sides, best first (`ProductSearch.search`; `mask` covers P + A)."""
        p = self.offset
        hits = self.base.search(vector, k, None if mask is None else mask[:p],
                                exclude if exclude is not None and exclude < p else None, exact)
        if self.added is None:
            return hits
        extra = self.added.search(vector, k, None if mask is None else mask[p:],
                                  exclude - p if exclude is not None and exclude >= p else None, exact=True)
        merged = hits + [hit._replace(product=hit.product + p) for hit in extra]
        return sorted(merged, key=lambda hit: -hit.score)[:k]
