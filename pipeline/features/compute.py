"""Backbone features, computed once per image into the feature cache; batches decoded by tf.data."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.features.cache import FeatureCache
from runtime import tfenv
from runtime.preprocess import INPUT_SIZE, decode_image

log = logging.getLogger(__name__)

BATCH_SIZE = 64
_DECODE: dict[int, Any] = {}  # per image side: traced once per process


def image_batches(paths: Sequence[str], batch_size: int = BATCH_SIZE, size: int = INPUT_SIZE) -> Any:
    """Return a tf.data pipeline of (row, images [B, size, size, 3]) batches: parallel decoding, prefetching,
    order kept.

    A file that fails to decode is dropped rather than ending the run; the row numbers that come out
    tell the caller which ones are missing.
    """
    tf = tfenv.tensorflow()
    if size not in _DECODE:  # traced once per process: each new pipeline then only wraps a call to it
        _DECODE[size] = tf.function(lambda path: decode_image(path, size),
                                    input_signature=[tf.TensorSpec([], tf.string)])
    decode = _DECODE[size]
    rows = tf.data.Dataset.range(len(paths))
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = tf.data.Dataset.zip((rows, files)).map(
        lambda i, p: (i, decode(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)


def unreadable_reason(path: str) -> str:
    """Say why tf.data could not decode an image (it drops such files without a word)."""
    try:
        decode_image(path)
    except Exception as error:  # noqa: BLE001 - any failure is the reason, reported, never raised
        message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", str(error).splitlines()[0] if str(error) else "")
        return f"{type(error).__name__}: {message[:200]}".rstrip(": ")
    return "decoded on its own but not in a batch"


def compute_missing(cache: FeatureCache, keys: Sequence[str], paths: Sequence[str],
                    backbone: Callable[[np.ndarray], np.ndarray], batch_size: int = BATCH_SIZE,
                    bar: tqdm | None = None, size: int = INPUT_SIZE) -> tuple[int, dict[str, str]]:
    """Run the backbone on every image whose key is not cached yet and cache the result as one part.

    Args:
        cache: the feature cache of this backbone.
        keys: content hashes of the images (equal images share one entry and one backbone pass).
        paths: the image files, aligned with `keys`.
        backbone: uint8 images [B, size, size, 3] -> features [B, F].
        batch_size: images per backbone call.
        bar: a progress bar to advance by the images computed.
        size: side of the images the backbone takes (its `input_size`).

    Returns:
        How many images went through the backbone, and {key: reason} of those that could not be decoded
        (skipped: the caller records them and goes on).
    """
    todo: dict[str, str] = {}
    for key, path in zip(keys, paths, strict=True):
        if key not in todo:
            todo[key] = path
    unique_keys = list(todo)
    uncached = np.flatnonzero(cache.locate(unique_keys)[0] < 0)
    if not len(uncached):
        return 0, {}
    todo_keys = [unique_keys[i] for i in uncached]
    todo_paths = [todo[k] for k in todo_keys]
    done_keys, done_features = [], []
    for rows, images in image_batches(todo_paths, batch_size, size):
        done_features.append(backbone(images.numpy()))
        done_keys.extend(todo_keys[i] for i in rows.numpy())
        if bar is not None:
            bar.update(len(images))
    failed = {k: unreadable_reason(todo[k]) for k in sorted(set(todo_keys) - set(done_keys))}
    for key, reason in failed.items():
        log.warning("skipped %s: %s", todo[key], reason)
    if done_keys:
        cache.add(done_keys, np.concatenate(done_features))
    return len(done_keys), failed


def fill_cache(cache: FeatureCache, keys: Sequence[str], paths: Sequence[str],
               backbone: Callable[[np.ndarray], np.ndarray], chunk: int = 1024,
               desc: str = "backbone") -> tuple[int, dict[str, str]]:
    """Compute the features of every uncached image, `chunk` images per cache part; nothing is held in memory.

    Images are prepared at the backbone's `input_size` (an `Encoder` attribute; INPUT_SIZE for a plain callable).

    Returns:
        Backbone passes run, and {key: reason} of the images that could not be decoded.
    """
    computed, failed = 0, {}
    with tqdm(total=cache.count_missing(keys), desc=desc, unit="img", disable=None) as bar:
        for start in range(0, len(keys), chunk):
            done, bad = compute_missing(cache, keys[start:start + chunk], paths[start:start + chunk], backbone,
                                        bar=bar, size=getattr(backbone, "input_size", INPUT_SIZE))
            computed += done
            failed.update(bad)
    return computed, failed
