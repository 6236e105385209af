"""Embeddings on disk: float32 unit vectors in catalog order, in shards with stamps (vectorize writes, index reads)."""

from __future__ import annotations

import io
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


def is_current(layout: Layout, i: int, stamp: dict) -> bool:
    """Whether shard `i` exists and was made from exactly what `stamp` describes."""
    stamp_file = layout.shard_stamp(i)
    return layout.shard(i).is_file() and stamp_file.is_file() and storage.read_json(stamp_file) == stamp


def write_shard(layout: Layout, i: int, vectors: np.ndarray, stamp: dict) -> None:
    """Write shard `i` and then its stamp, each atomically (a killed run never leaves a stamp on a stale shard)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, np.float32))
    storage.atomic_write_bytes(layout.shard(i), buffer.getvalue())
    storage.write_json(layout.shard_stamp(i), stamp)


def load_embeddings(data_dir: Path) -> np.ndarray:
    """Return the embeddings [N, dim] of a finished vectorize run, checked against its summary.

    Raises:
        FileNotFoundError: vectorize has not run.
        ValueError: the shards hold another number of rows than the summary says.
    """
    layout = Layout(Path(data_dir))
    if not layout.embeddings_summary.is_file():
        raise FileNotFoundError(f"no embeddings in {layout.embeddings}; run `python -m pipeline vectorize` first")
    summary = storage.read_json(layout.embeddings_summary)
    vectors = np.concatenate([np.load(layout.shard(i)) for i in range(summary["shards"])])
    if len(vectors) != summary["rows"]:
        raise ValueError(f"{layout.embeddings}: {len(vectors)} rows in shards, {summary['rows']} expected; "
                         "re-run vectorize")
    return vectors
