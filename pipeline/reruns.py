"""What makes a rerun cost what changed and leave nothing behind: the embeddings checked against the catalog row
by row, a fingerprint of everything an index version is built from (the same inputs make no new version), and a
stage's lock and the staging folders a failed run left.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runtime import embeddings, storage
from runtime.layout import LOCK, Layout

log = logging.getLogger(__name__)


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
        ValueError: a shard missing, or made from other images or another extractor; the message says which.
    """
    rows = summary.get("shard_rows")
    if not rows or summary.get("rows") != len(keys):
        raise ValueError(f"{summary.get('rows')} embeddings for {len(keys)} catalog rows; re-run vectorize")
    if summary.get("export_id") != export_id:
        raise ValueError("the embeddings were made by another extractor than model/extractor; re-run vectorize")
    contents = []
    for i, start in enumerate(range(0, len(keys), rows)):
        part = list(keys[start:start + rows])
        expected = embeddings.shard_stamp(i, start, part, export_id)
        path = layout.shard_stamp(i)
        written = storage.read_json(path) if path.is_file() and layout.shard(i).is_file() else None
        if not embeddings.matches(written, expected):
            raise ValueError(f"{layout.shard(i)} was not made from catalog rows {start}..{start + len(part) - 1} as "
                             "they are now (the catalog or the extractor changed since); re-run vectorize")
        contents.append(expected["content"])
    if len(contents) != summary.get("shards"):
        raise ValueError(f"{summary.get('shards')} shards in {layout.embeddings_summary}, {len(contents)} expected; "
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


@contextmanager
def locked(folder: Path, stage: str) -> Iterator[None]:
    """Hold `folder/.lock` for one run of a stage; a second run on the same folder fails at once, clearly (the
    operating system releases it when the process ends, however it ends).

    Raises:
        ValueError: another run holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another {stage} run is working in {folder} (it holds {folder / LOCK}); wait for it "
                             "to end") from None
        yield


def remove_leftovers(folder: Path, patterns: tuple[str, ...]) -> int:
    """Delete what an earlier run that failed or was killed left under `folder` (call it holding the lock);
    return how many entries went."""
    removed = 0
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d staging folder(s) an earlier run left in %s", removed, folder)
    return removed
