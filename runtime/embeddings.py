"""Embeddings on disk: float32 unit vectors in catalog order, in shards with stamps (vectorize writes, index reads)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime import storage
from runtime.layout import Layout


def shard_id(keys: list[str], export_id: str) -> str:
    """What a shard's bytes depend on: its rows' image contents and the extractor that embedded them."""
    return storage.sha256_bytes(("\n".join(keys) + "\n" + export_id).encode())


def shard_stamp(i: int, start: int, keys: list[str], export_id: str) -> dict:
    """The stamp written beside shard `i` (rows from `start`): a shard whose stamp matches is up to date."""
    return {"shard": i, "rows": [start, start + len(keys)], "content": shard_id(keys, export_id),
            "export_id": export_id}


def shard_number(name: str) -> int:
    """The shard a file of `embeddings/` belongs to (`part-00012.npy` and `part-00012.json` -> 12)."""
    return int(name.rsplit("/", 1)[-1].split("-")[1].split(".")[0])


def matches(written: dict | None, stamp: dict) -> bool:
    """Whether a written stamp was made from what `stamp` describes (what it found, such as `missing`, aside)."""
    return written is not None and all(written.get(key) == value for key, value in stamp.items())


def is_current(layout: Layout, i: int, stamp: dict) -> bool:
    """Whether shard `i` exists and was made from exactly what `stamp` describes."""
    stamp_file = layout.shard_stamp(i)
    return layout.shard(i).is_file() and stamp_file.is_file() and matches(storage.read_json(stamp_file), stamp)


def shard_bytes(vectors: np.ndarray) -> bytes:
    """A shard file's content: the vectors as float32 .npy."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, np.float32))
    return buffer.getvalue()


def write_shard(layout: Layout, i: int, vectors: np.ndarray, stamp: dict) -> None:
    """Write shard `i` and then its stamp, each atomically (a killed run never leaves a stamp on a stale shard).

    Rows whose image could not be read are NaN in the shard and listed in the stamp's `missing`.
    """
    storage.atomic_write_bytes(layout.shard(i), shard_bytes(vectors))
    storage.write_json(layout.shard_stamp(i), stamp)


def iter_shards(data_dir: Path) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first catalog row, vectors, readable mask) shard by shard from a finished vectorize run.

    Raises:
        FileNotFoundError: vectorize has not run.
        ValueError: a shard holds other rows than the summary says.
    """
    layout = Layout(Path(data_dir))
    if not layout.embeddings_summary.is_file():
        raise FileNotFoundError(f"no embeddings in {layout.embeddings}; run `python -m pipeline vectorize` first")
    summary = storage.read_json(layout.embeddings_summary)
    for i in range(summary["shards"]):
        stamp = storage.read_json(layout.shard_stamp(i))
        vectors = np.load(layout.shard(i))
        start, end = stamp["rows"]
        if len(vectors) != end - start or vectors.shape[1:] != (summary["dim"],):
            raise ValueError(f"{layout.shard(i)}: shape {vectors.shape}, rows {start}..{end} of {summary['dim']}-d "
                             "expected; re-run vectorize")
        readable = np.ones(len(vectors), bool)
        readable[[m["row"] - start for m in stamp.get("missing", [])]] = False
        yield start, vectors, readable


def load_embeddings(data_dir: Path) -> np.ndarray:
    """Return the embeddings [N, dim] of a finished vectorize run, in one array (NaN rows: images that could not
    be read); `iter_shards` streams them instead.

    Raises:
        FileNotFoundError: vectorize has not run.
        ValueError: the shards hold another number of rows than the summary says.
    """
    shards = [vectors for _, vectors, _ in iter_shards(data_dir)]
    rows = storage.read_json(Layout(Path(data_dir)).embeddings_summary)["rows"]
    vectors = np.concatenate(shards) if shards else np.zeros((0, 0), np.float32)
    if len(vectors) != rows:
        raise ValueError(f"{len(vectors)} rows in the shards of {data_dir}, {rows} expected; re-run vectorize")
    return vectors
