"""Random-projection locality-sensitive hashing in numpy: the seeds' baseline for the index benchmark.

Each of `tables` hash tables draws `bits` random hyperplanes; a vector's key in a table is the side of each
plane it falls on. A query collects every item that shares its key in any table and re-ranks those
candidates by exact cosine similarity.
"""

from __future__ import annotations

import numpy as np


class RandomProjectionLSH:
    """Several random-hyperplane hash tables with exact re-ranking of the candidates.

    Args:
        dim: vector length.
        tables: number of hash tables (more: higher recall, more candidates to re-rank).
        bits: hyperplanes per table (more: smaller buckets, lower recall per table).
        seed: seeds the hyperplanes.
    """

    def __init__(self, dim: int, tables: int = 8, bits: int = 12, seed: int = 0) -> None:
        if not 1 <= bits <= 62:
            raise ValueError(f"bits must be between 1 and 62, got {bits}")
        rng = np.random.default_rng(seed)
        self.planes = rng.standard_normal((tables, dim, bits)).astype(np.float32)
        self.weights = (1 << np.arange(bits, dtype=np.int64))
        self.vectors: np.ndarray | None = None
        self.buckets: list[dict[int, np.ndarray]] = []

    def _keys(self, vectors: np.ndarray, table: int) -> np.ndarray:
        return ((vectors @ self.planes[table]) > 0).astype(np.int64) @ self.weights

    def build(self, vectors: np.ndarray) -> RandomProjectionLSH:
        """Hash every vector into every table."""
        self.vectors = np.asarray(vectors, np.float32)
        self.buckets = []
        for table in range(len(self.planes)):
            keys = self._keys(self.vectors, table)
            order = np.argsort(keys, kind="stable")
            unique, starts = np.unique(keys[order], return_index=True)
            self.buckets.append(dict(zip(unique.tolist(), np.split(order, starts[1:]), strict=True)))
        return self

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """Return the ids sharing the query's bucket in at least one table."""
        found = [self.buckets[t].get(int(self._keys(query[None], t)[0])) for t in range(len(self.planes))]
        found = [ids for ids in found if ids is not None]
        return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)

    def query(self, query: np.ndarray, k: int) -> np.ndarray:
        """Return up to k ids, most cosine-similar first, among the candidates."""
        ids = self.candidates(np.asarray(query, np.float32))
        if not len(ids):
            return ids
        scores = self.vectors[ids] @ query
        top = np.argsort(-scores)[:k]
        return ids[top]

    def nbytes(self) -> int:
        """Memory of the tables (ids and planes), not counting the vectors."""
        return self.planes.nbytes + sum(ids.nbytes + 16 for table in self.buckets for ids in table.values())
