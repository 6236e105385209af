"""Naming a new index version, staging its folder, making it current, and reading the manifest `index/current` names.

Shared by the index stage (full and delta versions) and `pipeline remove` (delta versions). The pointer and pruning
are `runtime.versions`, which the service and deploy use too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from runtime import storage
from runtime.layout import MANIFEST, Layout
from runtime.versions import KEEP_VERSIONS, point_local, prune

LINEAGE_KEPT = 200  # names of earlier versions in a manifest: a few KB, months of nightly runs never deployed


def new_version() -> tuple[str, datetime]:
    """A version name that sorts by creation time (microseconds: two runs in one second differ), and the time."""
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"-{now.microsecond:06d}", now


def lineage(layout: Layout) -> list[str]:
    """The versions this data dir served before the one being built, newest first: the version `index/current` names
    now, then its own lineage (at most LINEAGE_KEPT names).

    Deploy moves S3's pointer only from one of these (`runtime.versions.move_s3_pointer`): a pointer naming anything
    else was moved by another publisher, whose work this version would undo.
    """
    current = current_manifest(layout)
    if current is None or not isinstance(current.get("version"), str):
        return []
    earlier = current.get("lineage") if isinstance(current.get("lineage"), list) else []
    return [current["version"], *earlier][:LINEAGE_KEPT]


def current_manifest(layout: Layout) -> dict | None:
    """The manifest of the version `index/current` names, or None when there is none (or it is unreadable)."""
    try:
        return storage.read_json(layout.current_index / MANIFEST)
    except (OSError, ValueError):
        return None


@contextmanager
def staged(layout: Layout) -> Iterator[tuple[str, datetime, Path]]:
    """A new version's name, creation time and staging folder (hidden in `index/`, so no reader and no pruning sees
    it). When the block ends, the folder becomes `index/<version>`, the manifest written last inside it; when the
    block raises, the folder is removed, whatever its size. Call it holding `index/.lock`."""
    version, now = new_version()
    staging = layout.index / f".tmp-{version}"
    staging.mkdir(parents=True)
    try:
        yield version, now, staging
        staging.rename(layout.index / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def make_current(layout: Layout, version: str, keep: int = KEEP_VERSIONS) -> None:
    """Switch `index/current` to a version folder of `index/` and prune the others down to `keep` (never the new
    current one, nor the base of a delta kept)."""
    point_local(layout.index, version)
    prune(layout.index, keep, protect={version}, order="name")
