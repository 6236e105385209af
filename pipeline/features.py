"""Backbone features, computed once per image: batches decoded by tf.data and a cache keyed by image content hash."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime import storage, tfenv
from runtime.layout import FEATURE_PART, FEATURE_PARTS
from runtime.preprocess import decode_image

log = logging.getLogger(__name__)

BATCH_SIZE = 64


def image_batches(paths: Sequence[str], batch_size: int = BATCH_SIZE) -> Any:
    """Return a tf.data pipeline of (row, images) batches: parallel decoding, prefetching, order kept.

    A file that fails to decode is dropped rather than ending the run; the row numbers that come out
    tell the caller which ones are missing.
    """
    tf = tfenv.tensorflow()
    rows = tf.data.Dataset.range(len(paths))
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = tf.data.Dataset.zip((rows, files)).map(
        lambda i, p: (i, decode_image(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)


class FeatureCache:
    """Backbone features on disk, one `part-*.npz` per batch of work, looked up by image sha256.

    Parts are written atomically, so a killed run leaves only whole parts and resumes after the last one.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._rows: dict[str, np.ndarray] = {}
        for part in sorted(self.root.glob(FEATURE_PARTS)):
            with np.load(part) as data:
                for key, row in zip(data["keys"].tolist(), data["features"], strict=True):
                    self._rows[key] = row

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Return the cached features of `keys`, in order (every key must be cached)."""
        return np.stack([self._rows[k] for k in keys])  # rows are stored as float32 already

    def count_missing(self, keys: Sequence[str]) -> int:
        """How many distinct keys are not cached yet (the backbone passes still to run)."""
        return len({k for k in keys if k not in self._rows})

    def add(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store the features of new keys as one new part file."""
        if not len(keys):
            return
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(keys), features=np.asarray(features, np.float32))
        name = FEATURE_PART.format(stamp=time.time_ns(), digest=storage.sha256_bytes("".join(keys).encode())[:12])
        storage.atomic_write_bytes(self.root / name, buffer.getvalue())
        self._rows.update(zip(keys, np.asarray(features, np.float32), strict=True))


def compute_missing(cache: FeatureCache, keys: Sequence[str], paths: Sequence[str],
                    backbone: Callable[[np.ndarray], np.ndarray], batch_size: int = BATCH_SIZE,
                    bar: tqdm | None = None) -> int:
    """Run the backbone on every image whose key is not cached yet and cache the result.

    Args:
        cache: the feature cache of this backbone.
        keys: content hashes of the images (equal images share one entry and one backbone pass).
        paths: the image files, aligned with `keys`.
        backbone: uint8 images [B, 224, 224, 3] -> features [B, F].
        batch_size: images per backbone call.
        bar: a progress bar to advance by the images computed.

    Returns:
        How many images went through the backbone.

    Raises:
        ValueError: an image could not be decoded (the catalog changed since acquire verified it).
    """
    todo: dict[str, str] = {}
    for key, path in zip(keys, paths, strict=True):
        if key not in cache and key not in todo:
            todo[key] = path
    if not todo:
        return 0
    todo_keys, todo_paths = list(todo), list(todo.values())
    done_keys, done_features = [], []
    for rows, images in image_batches(todo_paths, batch_size):
        features = backbone(images.numpy())
        done_keys.extend(todo_keys[i] for i in rows.numpy())
        done_features.append(features)
        if bar is not None:
            bar.update(len(images))
    if len(done_keys) != len(todo_keys):
        bad = sorted(set(todo_paths) - {todo[k] for k in done_keys})
        raise ValueError(f"{len(bad)} catalog image(s) could not be decoded, e.g. {bad[:3]}; "
                         "the catalog changed after acquire: re-run acquire")
    cache.add(done_keys, np.concatenate(done_features))
    return len(done_keys)


def catalog_features(cache: FeatureCache, keys: Sequence[str], paths: Sequence[str],
                     backbone: Callable[[np.ndarray], np.ndarray], chunk: int = 1024,
                     desc: str = "backbone") -> tuple[np.ndarray, int]:
    """Return features for every row (computing only the uncached ones, `chunk` rows per cache part)."""
    missing = cache.count_missing(keys)
    computed = 0
    with tqdm(total=missing, desc=desc, unit="img", disable=None) as bar:
        for start in range(0, len(keys), chunk):
            computed += compute_missing(cache, keys[start:start + chunk], paths[start:start + chunk], backbone,
                                        bar=bar)
    return cache.get(keys), computed
