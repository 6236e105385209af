"""Backbone features on disk, memory-mapped: parts of float32 rows plus a sorted index from image sha256 to row.

A part is `part-<digest>.npy` (float32 [n, F]) and `part-<digest>.keys` (n sha256 hex digests, 64 bytes each,
written last: a part without its keys file does not exist). The digest names the part's keys, so a task that
is retried or run twice writes the same files with the same bytes. Opening a cache reads only the keys files
(64 bytes a row); features are read through a memory map of the parts that a lookup touches, and the map is
dropped after each call, so memory follows the rows asked for, not the size of the cache.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from runtime import storage
from runtime.layout import FEATURE_KEYS_SUFFIX, FEATURE_PART, FEATURE_PARTS

log = logging.getLogger(__name__)

KEY_BYTES = 64  # a sha256 in hex
MERGE_SEGMENTS = 16  # sorted segments of the index before they are merged into one


def _as_keys(keys: Sequence[str]) -> np.ndarray:
    return np.asarray(keys, dtype=f"S{KEY_BYTES}")


def _groups(parts: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Split positions by part number: [(part, positions in that part)], parts ascending (one sort, not one scan
    of every position per part)."""
    order = np.argsort(parts, kind="stable")
    cuts = np.flatnonzero(np.diff(parts[order])) + 1
    return [(int(parts[chunk[0]]), chunk) for chunk in np.split(order, cuts) if len(chunk)]


class FeatureCache:
    """Backbone features by image sha256, stored in memory-mappable parts under one folder.

    Args:
        root: the cache folder of one encoder (`cache/features/<fingerprint>/`); created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parts: list[Path] = []
        self.feature_dim: int | None = None
        # The index: sorted segments of (keys, part number, row in part); lookups search each segment.
        self._segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        loaded = []
        for keys_file in sorted(self.root.glob(FEATURE_PARTS + FEATURE_KEYS_SUFFIX)):
            part = keys_file.with_suffix(".npy")
            keys = np.frombuffer(keys_file.read_bytes(), dtype=f"S{KEY_BYTES}")
            rows = self._shape(part)[0] if part.is_file() else -1
            if rows != len(keys):
                log.warning("feature cache part %s is incomplete (%d keys, %d rows); ignored", part.name, len(keys),
                            rows)
                continue
            loaded.append((keys, np.full(len(keys), len(self.parts), np.int32), np.arange(len(keys), dtype=np.int32)))
            self.parts.append(part)
        if loaded:
            self._segments = [self._sorted(*(np.concatenate(c) for c in zip(*loaded, strict=True)))]

    def _shape(self, part: Path) -> tuple[int, int]:
        shape = np.load(part, mmap_mode="r").shape  # reads the header; maps, touches no row
        if self.feature_dim is None and len(shape) == 2:
            self.feature_dim = int(shape[1])
        return int(shape[0]), int(shape[1]) if len(shape) == 2 else 0

    @staticmethod
    def _sorted(keys: np.ndarray, parts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(keys, kind="stable")
        keys, parts, rows = keys[order], parts[order], rows[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]  # a key cached twice (two runs raced) is read from one part
        return keys[first], parts[first], rows[first]

    def locate(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (part number, row in part) of each key, -1 where it is not cached."""
        wanted = _as_keys(keys)
        parts = np.full(len(wanted), -1, np.int32)
        rows = np.full(len(wanted), -1, np.int32)
        for seg_keys, seg_parts, seg_rows in self._segments:
            at = np.minimum(np.searchsorted(seg_keys, wanted), len(seg_keys) - 1)
            hit = (parts < 0) & (seg_keys[at] == wanted)
            parts[hit], rows[hit] = seg_parts[at[hit]], seg_rows[at[hit]]
        for part in np.unique(parts[parts >= 0]):
            if not self.parts[part].is_file():  # deleted since this cache was opened ("safe to delete")
                log.warning("feature cache part %s was deleted; its rows will be computed again", self.parts[part])
                gone = parts == part
                parts[gone], rows[gone] = -1, -1
        return parts, rows

    def __contains__(self, key: str) -> bool:
        return bool(self.locate([key])[0][0] >= 0)

    def __len__(self) -> int:
        return sum(len(s[0]) for s in self._segments)

    def count_missing(self, keys: Sequence[str]) -> int:
        """How many distinct keys are not cached yet (the backbone passes still to run)."""
        unique = np.unique(_as_keys(keys))
        return int((self.locate(unique)[0] < 0).sum())

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Return the cached features of `keys` [len(keys), F], in order (every key must be cached).

        Raises:
            KeyError: a key is not cached.
        """
        parts, rows = self.locate(keys)
        if (parts < 0).any():
            raise KeyError(f"{int((parts < 0).sum())} key(s) not in the feature cache {self.root}, "
                           f"e.g. {keys[int(np.argmax(parts < 0))]}")
        out = np.empty((len(keys), self.feature_dim or 0), np.float32)
        for part, mine in _groups(parts):
            data = np.load(self.parts[part], mmap_mode="r")
            out[mine] = data[rows[mine]]
            del data  # unmap: the pages read leave this process's resident set with the map
        return out

    def n_parts_of(self, keys: Sequence[str]) -> int:
        """How many parts hold `keys` (the length of an `order` for `iter_parts`)."""
        return len(np.unique(self.locate(keys)[0]))

    def iter_parts(self, keys: Sequence[str], order: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray,
                                                                                                    np.ndarray]]:
        """Yield (positions in `keys`, their features) part by part; `order` permutes the parts touched.

        Reading a part's rows together keeps the disk reads sequential however the caller shuffles.
        """
        parts, rows = self.locate(keys)
        if (parts < 0).any():
            raise KeyError(f"{int((parts < 0).sum())} key(s) not in the feature cache {self.root}")
        groups = _groups(parts)
        for g in range(len(groups)) if order is None else order:
            part, mine = groups[g]
            data = np.load(self.parts[part], mmap_mode="r")
            block = np.asarray(data[rows[mine]], np.float32)
            del data
            yield mine, block

    def add(self, keys: Sequence[str], features: np.ndarray) -> Path | None:
        """Store the features of new keys as one part (named by its keys: writing it twice is harmless)."""
        if not len(keys):
            return None
        features = np.ascontiguousarray(features, np.float32)
        if features.ndim != 2 or len(features) != len(keys):
            raise ValueError(f"{len(keys)} keys for features of shape {features.shape}")
        packed = _as_keys(keys)
        part = self.root / FEATURE_PART.format(digest=storage.sha256_bytes(packed.tobytes())[:24])
        buffer = io.BytesIO()
        np.save(buffer, features)
        storage.atomic_write_bytes(part, buffer.getvalue())
        storage.atomic_write_bytes(part.with_suffix(FEATURE_KEYS_SUFFIX), packed.tobytes())
        self.feature_dim = self.feature_dim or features.shape[1]
        if part in self.parts:
            return part
        self.parts.append(part)
        self._segments.append(self._sorted(packed, np.full(len(packed), len(self.parts) - 1, np.int32),
                                           np.arange(len(packed), dtype=np.int32)))
        if len(self._segments) > MERGE_SEGMENTS:
            self._segments = [self._sorted(*(np.concatenate(c) for c in zip(*self._segments, strict=True)))]
        return part
