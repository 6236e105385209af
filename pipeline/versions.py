"""Index versions under `index/`: naming a new one, switching `index/current` to it, and pruning old ones.

Shared by the index stage (full versions) and `pipeline remove` (delta versions over a full one). A delta needs
its base beside it, so pruning never removes the base of a version it keeps.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from runtime import storage
from runtime.layout import MANIFEST, Layout

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3


def new_version() -> tuple[str, datetime]:
    """A version name that sorts by creation time (microseconds: two runs in one second differ), and the time."""
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"-{now.microsecond:06d}", now


def current_manifest(layout: Layout) -> dict | None:
    """The manifest of the version `index/current` names, or None when there is none (or it is unreadable)."""
    try:
        return storage.read_json(layout.current_index / MANIFEST)
    except (OSError, ValueError):
        return None


def point_current(layout: Layout, version: str) -> None:
    """Switch `index/current` to a version atomically (a new symlink renamed over the old one)."""
    tmp = layout.index / f".current-{version}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    os.replace(tmp, layout.current_index)


def _base(folder: Path) -> str | None:
    try:
        return (storage.read_json(folder / MANIFEST).get("delta") or {}).get("base")
    except (OSError, ValueError):
        return None


def prune(layout: Layout, keep: int = KEEP_VERSIONS) -> list[Path]:
    """Delete all but the newest `keep` versions, never the current one nor the base of a version kept; a delta
    whose base is gone is deleted too (it cannot be served). Returns the folders removed."""
    versions = sorted(p for p in layout.index.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and not p.is_symlink())
    current = layout.current_index.resolve().name if layout.current_index.exists() else None
    kept = {p.name for p in versions[-keep:]} if keep > 0 else set()
    kept.add(current)
    kept |= {b for b in (_base(layout.index / name) for name in list(kept) if name) if b}
    removed = []
    for old in versions:
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    for left in (p for p in versions if p.name in kept and p.name != current):
        base = _base(left)
        if base and not (layout.index / base).is_dir():
            shutil.rmtree(left, ignore_errors=True)
            removed.append(left)
    if removed:
        log.info("removed %d old index version(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed
