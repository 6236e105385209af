"""The Flask-free searcher: one verified index folder in memory, answering image, similar and filtered queries."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from runtime import artifacts
from runtime.duplicate_groups import read_groups
from runtime.extractor import load_extractor
from runtime.items import ItemStore
from runtime.layout import ADDED_ITEMS, EXTRACTOR_DIR, ITEMS_FILE
from runtime.preprocess import prepare_array
from runtime.products import CombinedSearch, Hit, ProductSearch

log = logging.getLogger(__name__)

FACET_MAX_VALUES = 200  # columns with more distinct values are filterable but not listed as facets
NOT_FACETS = {"duplicate_of"}  # acquire's own flag (a product id): filterable, not a shopper's choice
SCORE_DECIMALS = 5  # an answer's scores are rounded to this; min_score is compared with the rounded score


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


class Base(NamedTuple):
    """What a full index version loads: shared by every delta version served over it (`Searcher.reuse`)."""

    folder: Path
    manifest: dict
    index: Any
    items: ItemStore
    vectors: np.ndarray
    groups: np.ndarray | None
    extractor: Any


def load_base(folder: Path, manifest: dict, threads: int | None = None) -> Base:
    """Memory-map a verified full version's Annoy index, items and vectors, and load its extractor."""
    index = artifacts.load_annoy(folder, manifest, prefault=True)
    vectors = artifacts.load_vectors(folder, manifest, index)
    return Base(folder, manifest, index, ItemStore(folder / ITEMS_FILE), vectors, read_groups(folder, manifest),
                load_extractor(folder / EXTRACTOR_DIR, threads))


class Searcher:
    """Everything one index version needs to answer queries: extractor, Annoy index, vectors, product maps.

    A delta version (`pipeline remove`) is served over its base, the full version it names: the base's files
    answer, and the delta's removed products are left out of every answer. A worker already serving that base
    (`reuse`) keeps its memory maps and extractor and loads only the delta.

    Args:
        folder: an index version folder (or anything `runtime.artifacts.resolve_index` accepts).
        check_hashes: verify every file's sha256 against the manifest before loading.
        threads: threads of a TFLite backbone (None: one per core).
        reuse: the searcher being served, whose base this one may share.
        hashed: folders whose every file was hashed just before (`service.store.fetch_s3_hashed`): not again.
    """

    def __init__(self, folder: Path, check_hashes: bool = True, threads: int | None = None,
                 reuse: Searcher | None = None, hashed: frozenset[Path] = frozenset()) -> None:
        started = time.perf_counter()
        self.folder = artifacts.resolve_index(folder)
        hashed = frozenset(Path(f).resolve() for f in hashed)
        self.manifest = artifacts.verify(self.folder, check_hashes=check_hashes and self.folder not in hashed)
        delta = self.manifest.get("delta")
        if delta and reuse is not None and reuse.base.folder == self.folder.parent / delta["base"] \
                and artifacts.manifest_sha256(reuse.base.folder) == delta["base_manifest_sha256"]:
            self.base = reuse.base
        else:
            base_hashes = check_hashes and (self.folder.parent / (delta or {}).get("base", "")).resolve() not in hashed
            self.base = load_base(*artifacts.base_of(self.folder, self.manifest, check_hashes=base_hashes), threads)
        self.index, self.items, self.vectors = self.base.index, self.base.items, self.base.vectors
        self.groups, self.extractor = self.base.groups, self.base.extractor
        removed = self._removed_numbers(artifacts.read_removed(self.folder, self.manifest))
        self.products = ProductSearch(self.vectors, self.items.image_counts, self.items.image_ids, self.index,
                                      int(self.manifest["search_k"]), int(self.manifest["n_trees"]),
                                      exact=self.manifest.get("strategy", "annoy") == "exact",  # measured at build
                                      scoring=self.manifest["scoring"], removed=removed)
        self.removed = self.products.removed  # bool per base product, or None
        self.added_items: ItemStore | None = None  # a delta's new and changed products: numbers P.. after the base's
        added = None
        if (delta or {}).get("added"):
            self.added_items = ItemStore(self.folder / ADDED_ITEMS)
            added = ProductSearch(artifacts.load_added_vectors(self.folder, self.manifest),
                                  self.added_items.image_counts, self.added_items.image_ids, None,
                                  scoring=self.manifest["scoring"])
        self.ranker = CombinedSearch(self.products, added)
        self.offset = len(self.items)  # the first added product's number
        self.count = self.ranker.n_products - self.products.n_removed  # products served
        self.columns = sorted(set(self.items.columns) | set(self.added_items.columns if self.added_items else ()))
        self.load_seconds = time.perf_counter() - started

    def _removed_numbers(self, product_ids: list[str]) -> np.ndarray:
        numbers = []
        for product_id in product_ids:
            try:
                numbers.append(self.items.lookup(product_id))
            except KeyError:
                raise artifacts.ArtifactError(f"{self.folder}: removes {product_id!r}, which its base "
                                              f"{self.base.folder.name} does not have") from None
        return np.asarray(numbers, np.int64)

    @property
    def version(self) -> str:
        """The index version (its folder name)."""
        return str(self.manifest["version"])

    @property
    def input_size(self) -> int:
        """The side of the square images the extractor takes (`runtime.imaging.model_pixels` makes them)."""
        return int(self.extractor.input_size)

    def warm_up(self) -> None:
        """Run one full query so that the first shopper does not pay for graph tracing and page faults."""
        vector = self.embed(np.full((64, 64, 3), 200, np.uint8))
        self.search(vector, 10)

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Return the unit vector of one RGB uint8 image [H, W, 3]."""
        return self.extractor.embed(prepare_array(rgb, self.extractor.input_size)[None])[0]

    def product(self, product_id: str) -> dict:
        """Return a product's item (id, product_id, name, category, image, thumbnail, metadata)."""
        if self.added_items is not None:
            try:
                return self.item(self.offset + self.added_items.lookup(product_id))
            except KeyError:
                pass
        try:
            number = self.items.lookup(product_id)
        except KeyError:
            raise UnknownProduct(product_id) from None
        if self.removed is not None and self.removed[number]:
            raise UnknownProduct(product_id)
        return self.items[number]

    def item(self, number: int) -> dict:
        """Product `number`'s item: the base's for 0..P-1, a delta's added product after (its id made global)."""
        if number < self.offset:
            return self.items[number]
        return {**self.added_items[number - self.offset], "id": number}

    def image_file(self, item: dict, position: int) -> Path:
        """The thumbnail file of one of a product's images: in the base, or in the delta for a product it added."""
        folder = self.folder if item["id"] >= self.offset else self.base.folder
        return folder / item["images"][position]["thumbnail"]

    def allowed(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Return a boolean mask of the products matching every column's filter (any of its values)."""
        mask = np.ones(self.ranker.n_products, dtype=bool)
        for column, values in filters.items():
            if column not in self.columns:
                raise UnknownFilter(column)
            column_mask = np.zeros(self.ranker.n_products, dtype=bool)
            for store, offset in self._stores():
                by_value = store.ids_by_value.get(column, {"": np.arange(len(store), dtype=np.int32)})
                for value in values:
                    column_mask[offset + by_value.get(value, np.empty(0, np.int32))] = True
            mask &= column_mask
        if self.removed is not None:
            mask[:self.offset] &= ~self.removed
        return mask

    def _stores(self) -> list[tuple[ItemStore, int]]:
        """The item stores and the number of each one's first product: the base's, then a delta's added ones."""
        return [(self.items, 0)] + ([(self.added_items, self.offset)] if self.added_items is not None else [])

    @functools.cached_property
    def facets(self) -> dict[str, list[dict]]:
        """Each low-cardinality column's values with their product counts, most common first: columns with 2 to
        FACET_MAX_VALUES values, each shared by two products on average (a name or an id is not a facet)."""
        out = {}
        most = min(FACET_MAX_VALUES, self.count // 2)
        for column in (c for c in self.columns if c not in NOT_FACETS):
            counts: Counter = Counter()
            for store, offset in self._stores():
                for value, ids in store.ids_by_value.get(column, {}).items():
                    if value != "":
                        counts[value] += self._served(ids) if offset == 0 else len(ids)
            counts = +counts  # values whose every product was removed are no facet values
            if 1 < len(counts) <= most:
                out[column] = [{"value": v, "count": c} for v, c in counts.most_common()]
        return out

    def _served(self, ids: np.ndarray) -> int:
        """How many of these products are served (not removed by a delta)."""
        return len(ids) if self.removed is None else int(len(ids) - self.removed[ids].sum())

    def search(self, vector: np.ndarray, k: int, filters: dict[str, list[str]] | None = None,
               exclude: int | None = None, collapse: bool = False, min_score: float | None = None,
               max_fetch: int | None = None) -> list[Match]:
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
            min_score: drop results whose score, as the answer shows it (rounded to SCORE_DECIMALS), is below this.
            max_fetch: with collapse, rank at most this many products looking for k groups (fewer than k come back
                when that many are not enough); None: as far as the catalog goes.

        Raises:
            NoDuplicateGroups: collapse on an index without groups.
        """
        mask = self.allowed(filters) if filters else None
        if collapse and self.groups is None:
            raise NoDuplicateGroups(self.version)
        fetch = k
        while True:
            hits = self.ranker.search(vector, fetch, mask, exclude)
            if collapse:
                _, first = np.unique([self._group(h.product) for h in hits], return_index=True)
                kept = [hits[i] for i in np.sort(first)]
            else:
                kept = hits
            exhausted = len(hits) < fetch or fetch >= self.count or (max_fetch is not None and fetch >= max_fetch)
            if len(kept) >= k or exhausted or (min_score is not None and round(hits[-1].score, SCORE_DECIMALS)
                                                < min_score):
                break
            fetch = min(fetch * 4, self.count, max(max_fetch or self.count, k))  # duplicates dropped: look further,
            # never past max_fetch
        if min_score is not None:
            kept = [h for h in kept if round(h.score, SCORE_DECIMALS) >= min_score]
        kept = kept[:k]
        return [self._match(hit) for hit in kept]

    def _group(self, product: int) -> int:
        """A product's near-duplicate group: the base's, or its own for a product a delta added (not grouped)."""
        return int(self.groups[product]) if product < self.offset else product

    def _match(self, hit: Hit) -> Match:
        item = self.item(hit.product)
        position = next(i for i, image in enumerate(item["images"]) if image["id"] == hit.image)
        return Match(item, hit.score, position)

    def similar(self, product_id: str, k: int, filters: dict[str, list[str]] | None = None, collapse: bool = False,
                min_score: float | None = None, max_fetch: int | None = None) -> list[Match]:
        """Return the products most similar to a catalog product, by its stored vectors (no encoder pass): the query
        is the normalised mean of its images' vectors. With `collapse`, its own near-duplicates are left out too."""
        item = self.product(product_id)
        results = self.search(self.ranker.product_vector(item["id"]), k + bool(collapse), filters,
                              exclude=item["id"], collapse=collapse, min_score=min_score, max_fetch=max_fetch)
        if collapse:
            own = self._group(item["id"])
            results = [m for m in results if self._group(m.item["id"]) != own]
        return results[:k]
