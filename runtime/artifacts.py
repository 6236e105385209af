"""Read and verify an index folder (manifest, Annoy index, item maps); no TensorFlow, no Flask."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from runtime import storage
from runtime.layout import CURRENT, INDEX_DIR, INDEX_FILE, ITEMS_FILE, MANIFEST, VECTORS_FILE

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: items.jsonl has a line per product, listing its images


class ArtifactError(ValueError):
    """An index folder that is incomplete, altered or of an unknown format."""


def resolve_index(path: Path) -> Path:
    """Return the index version folder that `path` names: a version folder, an `index/` folder or a data dir."""
    path = Path(path)
    for candidate in (path, path / CURRENT, path / INDEX_DIR / CURRENT):
        if (candidate / MANIFEST).is_file():
            return candidate.resolve()
    raise ArtifactError(f"no index at {path}: expected {MANIFEST} there, in {path}/{CURRENT} or in "
                        f"{path}/{INDEX_DIR}/{CURRENT}; run `python -m pipeline index` first")


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """Return {relative path: {sha256, bytes}} for every file under `root` except the manifest."""
    entries = {}
    for item in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries[item.relative_to(root).as_posix()] = {"sha256": storage.sha256_file(item), "bytes": item.stat().st_size}
    return entries


def verify(folder: Path, check_hashes: bool = True) -> dict:
    """Check an index folder against its manifest and return the manifest.

    Args:
        folder: an index version folder.
        check_hashes: also recompute every file's sha256 (sizes are always checked).

    Raises:
        ArtifactError: the manifest is missing or of another format, or a file is missing, resized or altered.
    """
    folder = Path(folder)
    try:
        manifest = storage.read_json(folder / MANIFEST)
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {folder / MANIFEST}: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{folder}: index format {manifest.get('format_version')!r}, this code reads "
                            f"{FORMAT_VERSION}; rebuild it with `python -m pipeline index`")
    for rel, entry in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"{folder}: {rel} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{folder}: {rel} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        if check_hashes and storage.sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{folder}: {rel} does not match its sha256 in the manifest (altered or corrupt)")
    for required in (INDEX_FILE, ITEMS_FILE, VECTORS_FILE):
        if required not in manifest.get("files", {}):
            raise ArtifactError(f"{folder}: the manifest lists no {required}")
    return manifest


def read_items(folder: Path) -> list[dict]:
    """Return the products: entry i describes product i (product id, name, category, images, metadata)."""
    with open(Path(folder) / ITEMS_FILE, encoding="utf-8") as fh:
        items = [json.loads(line) for line in fh if line.strip()]
    for i, item in enumerate(items):
        if item["id"] != i:
            raise ArtifactError(f"{folder}: {ITEMS_FILE} line {i + 1} has id {item['id']}, expected {i}")
    return items


def load_annoy(folder: Path, manifest: dict, prefault: bool = False) -> Any:
    """Memory-map the Annoy index of a verified folder."""
    from annoy import AnnoyIndex

    index = AnnoyIndex(int(manifest["dim"]), manifest["metric"])
    index.load(str(Path(folder) / INDEX_FILE), prefault=prefault)
    if index.get_n_items() != manifest["count"]:
        raise ArtifactError(f"{folder}: the index holds {index.get_n_items()} items, the manifest says "
                            f"{manifest['count']}")
    return index
