"""Near-duplicates through Annoy candidates: the same groups as comparing every pair, a threshold calibrated per
index, no group swallowing the catalog, and collapse still answering k products."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from pipeline import index
from pipeline.indexing import duplicate_search
from pipeline.indexing.duplicate_search import Neighbours, calibrate, find
from runtime.duplicate_groups import find_groups, group_count, group_pairs, product_vectors
from service import create_app


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def with_copies(n: int, dim: int, copies: int, noise: float, seed: int = 0) -> np.ndarray:
    """n random unit vectors, the last `copies` of them noisy copies of earlier ones (some copied twice)."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(n, dim)))
    sources = rng.integers(0, n - copies, copies)
    sources[: copies // 4] = sources[0]  # one product listed several times: a group of more than two
    vectors[n - copies:] = unit(vectors[sources] + noise * rng.normal(size=(copies, dim)) / np.sqrt(dim))
    return vectors


def annoy_over(vectors: np.ndarray, trees: int = 16) -> AnnoyIndex:
    annoy = AnnoyIndex(vectors.shape[1], "angular")
    for i, v in enumerate(vectors):
        annoy.add_item(i, v)
    annoy.build(trees, n_jobs=1)
    return annoy


def test_pairs_group_as_every_pair_compared() -> None:
    vectors = with_copies(600, 24, 80, 0.15)
    assert group_count(find_groups(vectors, 0.95)[0]) > 10  # the test data does have groups, one of them large
    for threshold in (0.95, 0.98, 0.995):
        exact = find_groups(vectors, threshold)
        sims = vectors @ vectors.T
        a, b = np.nonzero(sims >= threshold)
        grouped = group_pairs(len(vectors), a, b, sims[a, b], threshold)
        assert (grouped[0] == exact[0]).all() and np.allclose(grouped[1], exact[1], atol=1e-6)


@pytest.mark.parametrize("threshold", [0.9, 0.95, 0.98])
def test_annoy_candidates_reproduce_every_pair_groups(threshold: float) -> None:
    vectors = with_copies(4000, 32, 400, 0.2, seed=1)
    first, similarity, info = find(Neighbours(annoy_over(vectors), vectors, workers=2), threshold)
    exact, exact_sims = find_groups(vectors, threshold)
    assert group_count(exact) > 20 and (first == exact).all() and np.allclose(similarity, exact_sims, atol=1e-5)
    assert info["threshold"] == threshold and "calibration" not in info and info["candidate_pairs"] > 0


def test_a_product_with_more_near_neighbours_than_asked_widens_its_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duplicate_search, "NEIGHBOURS", 4)
    vectors = with_copies(500, 16, 100, 0.05, seed=2)  # 25 copies of one product: far more than 4 neighbours
    annoy = annoy_over(vectors)
    neighbours = Neighbours(annoy, vectors, workers=1)
    a, b, sims, counts = neighbours.pairs(0.98, neighbours=4)
    first, _ = group_pairs(len(vectors), a, b, sims, 0.98)
    assert counts["widened"] >= 20 and (first == find_groups(vectors, 0.98)[0]).all()


def test_products_of_several_images_are_compared_by_their_mean() -> None:
    rng = np.random.default_rng(3)
    products = with_copies(800, 24, 60, 0.1, seed=3)
    counts = rng.integers(1, 4, len(products))
    counts[::50] = 30  # products with more photos than a first query asks for (grocery's have about 33)
    images = unit(np.repeat(products, counts, axis=0) + 0.05 * rng.normal(size=(counts.sum(), 24)) / np.sqrt(24))
    image_product = np.repeat(np.arange(len(products)), counts)
    means = product_vectors(images, counts)
    neighbours = Neighbours(annoy_over(images), means, image_product, workers=2)
    first, _, _ = find(neighbours, 0.97)
    assert (first == find_groups(means, 0.97)[0]).all()
    nearest = neighbours.nearest_other(np.arange(len(products)))
    sims = means @ means.T
    np.fill_diagonal(sims, -2)
    # what calibration reads is the median; on random 24-d data (no structure to speak of) Annoy's nearest other
    # is often the second or third nearest, but never made up
    assert np.isfinite(nearest).all() and (nearest <= sims.max(axis=1) + 1e-5).all()
    assert abs(np.median(nearest) - np.median(sims.max(axis=1))) < 0.03


def test_calibration_follows_the_catalogs_own_scale() -> None:
    spread = with_copies(3000, 32, 100, 0.1, seed=4)  # products all over the sphere
    narrow = unit(np.ones(32) + 0.2 * spread)  # the same in a narrow cone
    thresholds = {}
    for name, vectors in (("spread", spread), ("narrow", narrow)):
        _first, _, info = find(Neighbours(annoy_over(vectors), vectors, workers=2))
        thresholds[name] = info["threshold"]
        calibration = info["calibration"]
        assert calibration["sample"] == len(vectors) and calibration["raised"] == []
        expected, _ = calibrate(duplicate_search.Neighbours(annoy_over(vectors), vectors).nearest_other(
            np.arange(len(vectors))))
        assert info["threshold"] == expected
        # the planted copies are what is grouped, whatever the cone
        assert 0.5 * 100 <= info["products_in_groups"] <= 3 * 100, info
    assert thresholds["narrow"] > 0.999 > thresholds["spread"]


def test_no_group_swallows_a_large_share_of_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = with_copies(2000, 16, 10, 0.1, seed=5)
    vectors[:300] = unit(vectors[0] + 0.05 * np.random.default_rng(5).normal(size=(300, 16)) / 4)  # one tight clump
    monkeypatch.setattr(duplicate_search, "calibrate", lambda nearest: (0.9, {"rule": "too low on purpose"}))
    first, _, info = find(Neighbours(annoy_over(vectors), vectors, workers=2))
    assert info["calibration"]["raised"][0] == {"threshold": 0.9, "largest_group": 300}
    assert info["largest_group"] <= duplicate_search.group_cap(2000) and info["threshold"] > 0.9
    assert np.bincount(first).max() == info["largest_group"]


def test_the_index_records_its_calibrated_threshold_and_collapse_answers_k(own_index: Path, tmp_path: Path) -> None:
    manifest = index.run(own_index, trees=4)
    near = manifest["near_duplicates"]
    assert manifest["duplicate_threshold"] == near["threshold"] and "rule" in near["calibration"]
    assert near["largest_group"] <= duplicate_search.group_cap(manifest["products"])
    app = create_app({"ARTIFACTS": str(own_index / "index" / "current"), "ARTIFACTS_CACHE": str(tmp_path / "c"),
                      "RELOAD_CHECK_S": 0})
    client = app.test_client()
    n_groups = len(set(np.load(own_index / "index" / "current" / "duplicates.npy").tolist()))
    data = next((own_index / "catalog" / "images").rglob("*.jpg")).read_bytes()
    for k in (5, 20, min(100, n_groups)):
        body = client.post(f"/api/search?k={k}&collapse=true", data={"image": (io.BytesIO(data), "q.jpg")},
                           content_type="multipart/form-data").get_json()
        assert len(body["results"]) == k, (k, n_groups)
        product = body["results"][0]["product_id"]
        like = client.get(f"/api/products/{product}/similar?k={k}&collapse=true").get_json()["results"]
        assert len(like) == min(k, n_groups - 1)
