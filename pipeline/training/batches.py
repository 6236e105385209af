"""Training batches streamed out of the feature cache with tf.data: memory follows a shuffle window, not the catalog.

Each epoch visits the cache's parts in a new random order and shuffles rows within a window of parts
(`WINDOW_BYTES` of features), so disk reads stay sequential and the batches stay well mixed. A catalog whose
features fit in one window (fashion-small at any encoder) is shuffled globally, as an in-memory array would be.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.features.cache import FeatureCache
from runtime import tfenv

WINDOW_BYTES = 64 * 2**20


def training_dataset(cache: FeatureCache, keys: Sequence[str], labels: np.ndarray, batch_size: int, seed: int = 0,
                     window_bytes: int = WINDOW_BYTES) -> Any:
    """Return a tf.data.Dataset of (features [B, F] float32, labels [B] int32), reshuffled at every epoch.

    Args:
        cache: the feature cache holding every key.
        keys: the image sha256 of each training row (a key may repeat).
        labels: the class of each training row.
        batch_size: rows per batch.
        seed: seeds the shuffling (epoch e draws the e-th permutation).
        window_bytes: features shuffled together in memory.
    """
    tf = tfenv.tensorflow()
    keys = np.asarray(keys, dtype="S64")
    labels = np.asarray(labels, np.int32)
    dim = int(cache.feature_dim or 0)
    window_rows = max(batch_size, window_bytes // max(4 * dim, 1))
    n_parts = cache.n_parts_of(keys)
    rng = np.random.default_rng(seed)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        held_x: list[np.ndarray] = []
        held_y: list[np.ndarray] = []
        held = 0
        for mine, block in cache.iter_parts(keys, order=rng.permutation(n_parts)):
            held_x.append(block)
            held_y.append(labels[mine])
            held += len(mine)
            if held >= window_rows:
                yield from _shuffled(held_x, held_y, batch_size, rng, keep_remainder=True)
                held = sum(len(y) for y in held_y)
        yield from _shuffled(held_x, held_y, batch_size, rng, keep_remainder=False)

    signature = (tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def _shuffled(held_x: list[np.ndarray], held_y: list[np.ndarray], batch_size: int, rng: np.random.Generator,
              keep_remainder: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield shuffled batches of what is held; leave a partial last batch held for the next window if asked."""
    x, y = np.concatenate(held_x), np.concatenate(held_y)
    held_x.clear()
    held_y.clear()
    order = rng.permutation(len(y))
    full = len(y) - len(y) % batch_size if keep_remainder else len(y)
    for start in range(0, full, batch_size):
        chosen = order[start:start + batch_size]
        yield x[chosen], y[chosen]
    if full < len(y):
        held_x.append(x[order[full:]])
        held_y.append(y[order[full:]])


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Return `rows` if there are at most `limit`, else a seeded random `limit` of them, in ascending order."""
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
