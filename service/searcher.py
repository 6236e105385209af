"""The Flask-free searcher: one verified index folder in memory, answering image, similar and filtered queries."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime import artifacts
from runtime.duplicates import read_groups
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_DIR, ITEMS_FILE
from runtime.preprocess import prepare_array
from runtime.products import Hit, ProductSearch
from service.items import ItemStore

log = logging.getLogger(__name__)

FACET_MAX_VALUES = 200  # columns with more distinct values are filterable but not listed as facets
NOT_FACETS = {"duplicate_of"}  # acquire's own flag (a product id): filterable, not a shopper's choice


class UnknownProduct(KeyError):
    """A product id that is not in the index."""


class UnknownFilter(ValueError):
    """A filter on a column that the index does not have."""


class NoDuplicateGroups(RuntimeError):
    """collapse=true on an index built without near-duplicate groups."""


class Match(NamedTuple):
    """One result: the product's item, its score, and the position in `item["images"]` of its best image."""

    item: dict
    score: float
    image: int


class Searcher:
    """Everything one index version needs to answer queries: extractor, Annoy index, vectors, product maps.

    Args:
        folder: an index version folder (or anything `runtime.artifacts.resolve_index` accepts).
        check_hashes: verify every file's sha256 against the manifest before loading.
        threads: threads of a TFLite backbone (None: one per core).
    """

    def __init__(self, folder: Path, check_hashes: bool = True, threads: int | None = None) -> None:
        started = time.perf_counter()
        self.folder = artifacts.resolve_index(folder)
        self.manifest = artifacts.verify(self.folder, check_hashes=check_hashes)
        self.index = artifacts.load_annoy(self.folder, self.manifest, prefault=True)
        self.items = ItemStore(self.folder / ITEMS_FILE)
        self.vectors = artifacts.load_vectors(self.folder, self.manifest, self.index)
        self.products = ProductSearch(self.vectors, self.items.image_counts, self.items.image_ids, self.index,
                                      int(self.manifest["search_k"]), int(self.manifest["n_trees"]),
                                      exact=self.manifest.get("strategy", "annoy") == "exact",  # measured at build
                                      scoring=self.manifest["scoring"])
        self.groups = read_groups(self.folder, self.manifest)  # near-duplicate group of each product, if built
        self.extractor = load_extractor(self.folder / EXTRACTOR_DIR, threads)
        self.columns = self.items.columns
        self.load_seconds = time.perf_counter() - started

    @property
    def exact(self) -> bool:
        """Whether every query scans all vectors instead of asking Annoy (the manifest's measured strategy)."""
        return self.products.exact

    @exact.setter
    def exact(self, value: bool) -> None:
        self.products.exact = value

    @property
    def version(self) -> str:
        """The index version (its folder name)."""
        return str(self.manifest["version"])

    def warm_up(self) -> None:
        """Run one full query so that the first shopper does not pay for graph tracing and page faults."""
        vector = self.embed(np.full((64, 64, 3), 200, np.uint8))
        self.search(vector, 10)

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Return the unit vector of one RGB uint8 image [H, W, 3]."""
        return self.extractor.embed(prepare_array(rgb, self.extractor.input_size)[None])[0]

    def product(self, product_id: str) -> dict:
        """Return a product's item (id, product_id, name, category, image, thumbnail, metadata)."""
        try:
            return self.items[self.items.lookup(product_id)]
        except KeyError:
            raise UnknownProduct(product_id) from None

    def allowed(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Return a boolean mask of the products matching every column's filter (any of its values)."""
        mask = np.ones(len(self.items), dtype=bool)
        for column, values in filters.items():
            if column not in self.columns:
                raise UnknownFilter(column)
            by_value = self.items.ids_by_value[column]
            column_mask = np.zeros(len(self.items), dtype=bool)
            for value in values:
                column_mask[by_value.get(value, np.empty(0, np.int32))] = True
            mask &= column_mask
        return mask

    @functools.cached_property
    def facets(self) -> dict[str, list[dict]]:
        """Each low-cardinality column's values with their product counts, most common first: columns with 2 to
        FACET_MAX_VALUES values, each shared by two products on average (a name or an id is not a facet)."""
        out = {}
        most = min(FACET_MAX_VALUES, len(self.items) // 2)
        for column in (c for c in self.columns if c not in NOT_FACETS):
            counts = Counter({v: len(ids) for v, ids in self.items.ids_by_value[column].items() if v != ""})
            if 1 < len(counts) <= most:
                out[column] = [{"value": v, "count": c} for v, c in counts.most_common()]
        return out

    def search(self, vector: np.ndarray, k: int, filters: dict[str, list[str]] | None = None,
               exclude: int | None = None, collapse: bool = False, min_score: float | None = None) -> list[Match]:
        """Return up to k products, best first, each at most once, with the image of each that matched best.

        The Annoy index and the vectors hold one row per image; a product's score comes from all its images
        (`runtime.products`, the manifest's `scoring`). A catalog small enough that scanning every vector beat
        Annoy when the index was built (the manifest's `strategy`) is always scanned exactly. Otherwise, with
        filters, exactly k matching products come back whenever at least k exist: a narrow filter is answered by
        an exact scan of its products' images; a broad one by an Annoy query that over-fetches by the inverse of
        the filter's share of the catalog and widens until it has k products (falling back to the exact scan).

        Args:
            vector: the query's unit vector.
            k: products wanted.
            filters: column -> accepted values (values of one column are alternatives; columns all apply).
            exclude: a product never to return (the one a "more like this" query starts from).
            collapse: at most one product per near-duplicate group (the best-scoring one), still k when k groups
                are allowed.
            min_score: drop results less similar than this.

        Raises:
            NoDuplicateGroups: collapse on an index without groups.
        """
        mask = self.allowed(filters) if filters else None
        if collapse and self.groups is None:
            raise NoDuplicateGroups(self.version)
        fetch = k
        while True:
            hits = self.products.search(vector, fetch, mask, exclude)
            if collapse:
                _, first = np.unique(self.groups[[h.product for h in hits]], return_index=True)
                kept = [hits[i] for i in np.sort(first)]
            else:
                kept = hits
            exhausted = len(hits) < fetch or fetch >= len(self.items)
            if len(kept) >= k or exhausted or (min_score is not None and hits[-1].score < min_score):
                break
            fetch = min(fetch * 4, len(self.items))  # dropped duplicates: look further down the ranking
        kept = kept[:k] if min_score is None else [h for h in kept[:k] if h.score >= min_score]
        return [self._match(hit) for hit in kept]

    def _match(self, hit: Hit) -> Match:
        item = self.items[hit.product]
        position = next(i for i, image in enumerate(item["images"]) if image["id"] == hit.image)
        return Match(item, hit.score, position)

    def similar(self, product_id: str, k: int, filters: dict[str, list[str]] | None = None, collapse: bool = False,
                min_score: float | None = None) -> list[Match]:
        """Return the products most similar to a catalog product, by its stored vectors (no encoder pass): the query
        is the normalised mean of its images' vectors. With `collapse`, its own near-duplicates are left out too."""
        item = self.product(product_id)
        results = self.search(self.products.product_vector(item["id"]), k + bool(collapse), filters,
                              exclude=item["id"], collapse=collapse, min_score=min_score)
        if collapse:
            own = self.groups[item["id"]]
            results = [m for m in results if self.groups[m.item["id"]] != own]
        return results[:k]
