"""The Flask-free searcher: one verified index folder in memory, answering image, similar and filtered queries."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from runtime import artifacts
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_DIR, ITEMS_FILE, VECTORS_FILE
from runtime.preprocess import prepare_array
from runtime.topk import exact_top_k
from service.items import ItemStore

log = logging.getLogger(__name__)

EXACT_FILTER_BELOW = 2_000  # a filter matching fewer products is answered by an exact scan of just those
FACET_MAX_VALUES = 200  # columns with more distinct values are filterable but not listed as facets


class UnknownProduct(KeyError):
    """A product id that is not in the index."""


class UnknownFilter(ValueError):
    """A filter on a column that the index does not have."""


class Searcher:
    """Everything one index version needs to answer queries: extractor, Annoy index, vectors, item maps.

    Args:
        folder: an index version folder (or anything `runtime.artifacts.resolve_index` accepts).
        check_hashes: verify every file's sha256 against the manifest before loading.
    """

    def __init__(self, folder: Path, check_hashes: bool = True) -> None:
        started = time.perf_counter()
        self.folder = artifacts.resolve_index(folder)
        self.manifest = artifacts.verify(self.folder, check_hashes=check_hashes)
        self.index = artifacts.load_annoy(self.folder, self.manifest, prefault=True)
        self.items = ItemStore(self.folder / ITEMS_FILE)
        self.vectors = np.load(self.folder / VECTORS_FILE, mmap_mode="r")
        if self.vectors.shape != (len(self.items), self.manifest["dim"]):
            raise artifacts.ArtifactError(f"{self.folder}: vectors.npy has shape {self.vectors.shape}, expected "
                                          f"({len(self.items)}, {self.manifest['dim']})")
        self.extractor = load_extractor(self.folder / EXTRACTOR_DIR)
        self.columns = self.items.columns
        self.search_k = int(self.manifest["search_k"])
        self.n_trees = int(self.manifest["n_trees"])
        self.exact = self.manifest.get("strategy", "annoy") == "exact"  # measured by the index stage
        self.load_seconds = time.perf_counter() - started

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
        """Return a boolean mask of the items matching every column's filter (any of its values)."""
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
        """Each low-cardinality column's values with their product counts, most common first."""
        out = {}
        for column in self.columns:
            counts = Counter({v: len(ids) for v, ids in self.items.ids_by_value[column].items() if v != ""})
            if 1 < len(counts) <= FACET_MAX_VALUES:
                out[column] = [{"value": v, "count": c} for v, c in counts.most_common()]
        return out

    def search(self, vector: np.ndarray, k: int, filters: dict[str, list[str]] | None = None,
               exclude: int | None = None) -> list[tuple[dict, float]]:
        """Return up to k (item, cosine similarity) pairs, best first.

        A catalog small enough that scanning every vector beat Annoy when the index was built (the manifest's
        `strategy`) is always scanned exactly. Otherwise, with filters, exactly k matching items come back
        whenever at least k exist: a narrow filter is answered by an exact scan of its matches; a broad one
        by an Annoy query that over-fetches by the inverse of the filter's share of the catalog and widens
        until it has k matches (falling back to the exact scan). Candidates are always re-ranked by their
        exact cosine similarity.

        Args:
            vector: the query's unit vector.
            k: results wanted.
            filters: column -> accepted values (values of one column are alternatives; columns all apply).
            exclude: an item id never to return (the product a "more like this" query starts from).
        """
        mask = self.allowed(filters) if filters else None
        if mask is not None and exclude is not None:
            mask[exclude] = False
        if mask is None:
            n_allowed = len(self.items) - (exclude is not None)
        else:
            n_allowed = int(mask.sum())
        wanted = min(k, n_allowed)
        if wanted == 0:
            return []
        if mask is not None and (self.exact or n_allowed <= EXACT_FILTER_BELOW):
            return self._rank(np.flatnonzero(mask), vector, wanted)
        if self.exact:
            return self._scan(vector, wanted, exclude)
        share = n_allowed / len(self.items)
        n = math.ceil(wanted / share * (1.5 if mask is not None else 1)) + (exclude is not None)
        while True:
            ids = self.index.get_nns_by_vector(vector, n, search_k=max(self.search_k, n * self.n_trees))
            matches = [i for i in ids if (mask is None or mask[i]) and i != exclude]
            if len(matches) >= wanted:
                return self._rank(np.array(matches), vector, wanted)
            if n >= len(self.items):
                everything = np.ones(len(self.items), dtype=bool) if mask is None else mask
                if exclude is not None:
                    everything[exclude] = False
                return self._rank(np.flatnonzero(everything), vector, wanted)
            n = min(len(self.items), n * 4)

    def _scan(self, vector: np.ndarray, k: int, exclude: int | None) -> list[tuple[dict, float]]:
        ids = exact_top_k(self.vectors, vector[None], k, None if exclude is None else np.array([exclude]))[0]
        return self._rank(ids, vector, k)

    def _rank(self, ids: np.ndarray, vector: np.ndarray, k: int) -> list[tuple[dict, float]]:
        ids = np.sort(ids)  # ascending reads of the memory-mapped vectors
        scores = np.asarray(self.vectors[ids] @ vector)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.items[int(ids[i])], float(scores[i])) for i in top]

    def similar(self, product_id: str, k: int, filters: dict[str, list[str]] | None = None) -> list[tuple[dict, float]]:
        """Return the products most similar to a catalog product, by its stored vector (no encoder pass)."""
        item = self.product(product_id)
        return self.search(np.asarray(self.vectors[item["id"]]), k, filters, exclude=item["id"])
