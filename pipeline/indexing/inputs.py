"""What an index version is built from: the embeddings checked against the catalog row by row, and one
fingerprint of the catalog, the shards and the options, so that the same inputs make no new version (a rerun
costs what changed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from pipeline.common.errors import StageError
from runtime import embeddings, storage
from runtime.layout import Layout


def check_shards(layout: Layout, keys: Sequence[str], summary: dict, export_id: str) -> list[str]:
    """Check that every embedding shard was made from the catalog rows it must hold, by the current extractor.

    A shard's stamp names the image hashes it embedded (`runtime.embeddings.shard_stamp`); a catalog acquired
    again with as many rows but other images must not be served with the old vectors.

    Args:
        layout: the data directory.
        keys: the catalog's image sha256s, in row order (a list, or a column: a shard's worth is taken at once).
        summary: `embeddings/embeddings.json`.
        export_id: the extractor's export id.

    Returns:
        Each shard's content id, in order.

    Raises:
        StageError: a shard missing, or made from other images or another extractor; the message says which.
    """
    rows = summary.get("shard_rows")
    if not rows or summary.get("rows") != len(keys):
        raise StageError(f"{summary.get('rows')} embeddings for {len(keys)} catalog rows; re-run vectorize")
    if summary.get("export_id") != export_id:
        raise StageError("the embeddings were made by another extractor than model/extractor; re-run vectorize")
    contents = []
    for i, start in enumerate(range(0, len(keys), rows)):
        part = list(keys[start:start + rows])
        expected = embeddings.shard_stamp(i, start, part, export_id)
        path = layout.shard_stamp(i)
        written = storage.read_json(path) if path.is_file() and layout.shard(i).is_file() else None
        if not embeddings.matches(written, expected):
            raise StageError(f"{layout.shard(i)} was not made from catalog rows {start}..{start + len(part) - 1} as "
                             "they are now (the catalog or the extractor changed since); re-run vectorize")
        contents.append(expected["content"])
    if len(contents) != summary.get("shards"):
        raise StageError(f"{summary.get('shards')} shards in {layout.embeddings_summary}, {len(contents)} expected; "
                         "re-run vectorize")
    return contents


def fingerprint(layout: Layout, shard_contents: list[str], options: dict) -> str:
    """One id for everything a version is built from: the catalog file (names, metadata, image hashes), each
    shard's content id (its images and extractor) and the stage's options."""
    digest = hashlib.sha256()
    digest.update(storage.sha256_file(layout.catalog_csv).encode())
    digest.update("\n".join(shard_contents).encode())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()
