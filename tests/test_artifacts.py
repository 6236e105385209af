"""The vectors of an index version: read from its Annoy file (format 3) or its vectors.npy (format 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from runtime import artifacts


def build(path: Path, vectors: np.ndarray, metric: str = "angular") -> AnnoyIndex:
    index = AnnoyIndex(vectors.shape[1], metric)
    for i, vector in enumerate(vectors):
        index.add_item(i, vector)
    index.build(3)
    index.save(str(path))
    return index


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_annoy_file_holds_the_vectors_exactly(tmp_path: Path) -> None:
    vectors = unit(1000, 24)
    index = build(tmp_path / "index.ann", vectors)
    read = artifacts.annoy_vectors(tmp_path / "index.ann", 1000, 24, index)
    assert np.array_equal(read, vectors) and not read.flags.writeable
    query = vectors[7]
    assert np.argmax(read @ query) == 7  # BLAS reads the strided rows as they are


def test_another_layout_is_refused_not_misread(tmp_path: Path) -> None:
    vectors = unit(300, 16)
    build(tmp_path / "euclidean.ann", vectors, "euclidean")  # its nodes carry one more field
    with pytest.raises(artifacts.ArtifactError, match="not laid out as this code reads them"):
        artifacts.annoy_vectors(tmp_path / "euclidean.ann", 300, 16)
    index = build(tmp_path / "index.ann", vectors)
    with pytest.raises(artifacts.ArtifactError, match="too small"):
        artifacts.annoy_vectors(tmp_path / "index.ann", 100_000, 16, index)


def test_format_2_versions_are_still_read_from_vectors_npy(tmp_path: Path) -> None:
    vectors = unit(50, 8)
    build(tmp_path / "index.ann", vectors)
    np.save(tmp_path / "vectors.npy", vectors[::-1].copy())  # tells the two sources apart
    manifest = {"format_version": 2, "count": 50, "dim": 8}
    assert np.array_equal(artifacts.load_vectors(tmp_path, manifest), vectors[::-1])
    assert np.array_equal(artifacts.load_vectors(tmp_path, {**manifest, "format_version": 3}), vectors)
    with pytest.raises(artifacts.ArtifactError, match=r"vectors of shape \(50, 8\)"):
        artifacts.load_vectors(tmp_path, {**manifest, "count": 40})
