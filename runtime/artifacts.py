"""Read and verify an index folder (manifest, Annoy index, item maps); no TensorFlow, no Flask."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime import storage
from runtime.layout import (
    ADDED_ITEMS,
    ADDED_VECTORS,
    CURRENT,
    INDEX_DIR,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST,
    REMOVED_FILE,
    VECTORS_FILE,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: no vectors.npy, the vectors are read from index.ann (`annoy_vectors`)
READABLE_FORMATS = (2, 3)  # 2: items.jsonl has a line per product, listing its images; the vectors in vectors.npy
ANNOY_NODE_HEADER = 3  # int32 fields before an angular Annoy node's vector: n_descendants, two children (annoylib.h)


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


def parse_manifest(data: bytes, where: str) -> dict:
    """Return the manifest in `data` (read from `where`) once it is one: a JSON object whose `files` maps each name
    to its sha256 and size.

    Raises:
        ArtifactError: anything else, which no retry will change.
    """
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the {MANIFEST} at {where} is not JSON: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(rel, str) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int) for rel, entry in files.items()):
        raise ArtifactError(f"the {MANIFEST} at {where} is not an index manifest: it needs \"files\" mapping each "
                            "name to its sha256 and bytes")
    return manifest


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
        manifest = parse_manifest((folder / MANIFEST).read_bytes(), str(folder))
    except OSError as exc:
        raise ArtifactError(f"cannot read {folder / MANIFEST}: {exc}") from None
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise ArtifactError(f"{folder}: index format {manifest.get('format_version')!r}, this code reads "
                            f"{READABLE_FORMATS}; rebuild it with `python -m pipeline index`")
    for rel, entry in manifest["files"].items():
        try:
            path = storage.inside(folder, rel, f"{folder}: the manifest lists")
        except storage.UnsafePathError as exc:
            raise ArtifactError(str(exc)) from None
        if not path.is_file():
            raise ArtifactError(f"{folder}: {rel} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{folder}: {rel} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        if check_hashes and storage.sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{folder}: {rel} does not match its sha256 in the manifest (altered or corrupt)")
    if manifest.get("delta"):
        required: tuple[str, ...] = (REMOVED_FILE,) + ((ADDED_ITEMS, ADDED_VECTORS) if manifest["delta"].get("added")
                                                       else ())
    else:
        required = (INDEX_FILE, ITEMS_FILE) + ((VECTORS_FILE,) if manifest["format_version"] == 2 else ())
    for name in required:
        if name not in manifest["files"]:
            raise ArtifactError(f"{folder}: the manifest lists no {name}")
    return manifest


def manifest_sha256(folder: Path) -> str:
    """The sha256 of a version's manifest: what a delta records to name its base exactly."""
    return storage.sha256_file(Path(folder) / MANIFEST)


def base_of(folder: Path, manifest: dict, check_hashes: bool = True) -> tuple[Path, dict]:
    """The full version a delta version is served over, verified, with its manifest; (folder, manifest) itself
    for a full version.

    A delta (`pipeline remove`) holds only what changed; its base is the sibling folder its manifest names, and
    must be the very version the delta was made over (its manifest's sha256), not another build of that name.

    Raises:
        ArtifactError: the base is missing, altered or not the one recorded.
    """
    delta = manifest.get("delta")
    if not delta:
        return Path(folder), manifest
    base = Path(folder).parent / delta["base"]
    if not (base / MANIFEST).is_file():
        raise ArtifactError(f"{folder} is a delta over version {delta['base']}, which is not beside it in "
                            f"{Path(folder).parent}; fetch or rebuild that version")
    if manifest_sha256(base) != delta["base_manifest_sha256"]:
        raise ArtifactError(f"{base} is not the version {folder} was made over (its manifest's sha256 differs)")
    base_manifest = verify(base, check_hashes=check_hashes)
    if base_manifest.get("delta"):
        raise ArtifactError(f"{folder}: its base {base} is itself a delta")
    return base, base_manifest


def load_added_vectors(folder: Path, manifest: dict) -> np.ndarray:
    """Memory-map the vectors of a delta's added products' images (float32 [n, dim], unit length)."""
    vectors = np.load(Path(folder) / ADDED_VECTORS, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[1] != manifest["dim"] or vectors.dtype != np.float32:
        raise ArtifactError(f"{folder}: {ADDED_VECTORS} is {vectors.dtype} {vectors.shape}, expected float32 "
                            f"[n, {manifest['dim']}]")
    return vectors


def read_removed(folder: Path, manifest: dict) -> list[str]:
    """The product ids a delta version no longer serves ([] for a full version)."""
    if not manifest.get("delta"):
        return []
    removed = storage.read_json(Path(folder) / REMOVED_FILE)
    if not isinstance(removed, list) or not all(isinstance(p, str) for p in removed):
        raise ArtifactError(f"{folder}: {REMOVED_FILE} is not a list of product ids")
    return removed


def load_annoy(folder: Path, manifest: dict, prefault: bool = False) -> Any:
    """Memory-map the Annoy index of a verified folder."""
    from annoy import AnnoyIndex

    index = AnnoyIndex(int(manifest["dim"]), manifest["metric"])
    index.load(str(Path(folder) / INDEX_FILE), prefault=prefault)
    if index.get_n_items() != manifest["count"]:
        raise ArtifactError(f"{folder}: the index holds {index.get_n_items()} items, the manifest says "
                            f"{manifest['count']}")
    return index


def load_vectors(folder: Path, manifest: dict, index: Any = None) -> np.ndarray:
    """Memory-map the image vectors of a verified folder: one row per image id, unit length.

    A version of format 3 keeps them only in its Annoy file (`annoy_vectors`); one of format 2 in vectors.npy.
    """
    folder = Path(folder)
    if manifest["format_version"] == 2:
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    else:
        vectors = annoy_vectors(folder / INDEX_FILE, int(manifest["count"]), int(manifest["dim"]), index)
    if vectors.shape != (manifest["count"], manifest["dim"]):
        raise ArtifactError(f"{folder}: vectors of shape {vectors.shape}, the manifest says "
                            f"({manifest['count']}, {manifest['dim']})")
    return vectors


def annoy_vectors(path: Path, count: int, dim: int, index: Any = None) -> np.ndarray:
    """The item vectors that an angular Annoy file holds, memory-mapped without a copy, read only.

    Annoy writes item i as node i: three int32 fields (an item's n_descendants is 1) and then its `dim` float32
    values as they were added. Reading them here spares a second copy of every vector on disk and in the page cache
    (half of what a worker maps at 128-d, docs/performance-and-scale.md). Sampled rows are checked against the
    layout and, given the loaded `index`, against `get_item_vector`, so that another Annoy file layout is refused
    instead of read wrongly.
    """
    node = ANNOY_NODE_HEADER + dim
    raw = np.memmap(path, dtype=np.float32, mode="r")
    if raw.size < count * node:
        raise ArtifactError(f"{path}: {raw.size * 4} bytes, too small for {count} items of {dim} floats")
    nodes = raw[:count * node].reshape(count, node)
    sample = np.unique(np.linspace(0, count - 1, min(count, 16)).astype(np.int64))
    ok = (nodes[sample, 0].view(np.int32) == 1).all()
    if ok and index is not None:
        ok = all(np.array_equal(nodes[i, ANNOY_NODE_HEADER:], np.float32(index.get_item_vector(int(i))))
                 for i in sample)
    if not ok:
        raise ArtifactError(f"{path}: its items are not laid out as this code reads them (another Annoy version?); "
                            f"rebuild the index with `python -m pipeline index`")
    return nodes[:, ANNOY_NODE_HEADER:]
