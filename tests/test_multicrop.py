"""Multi-crop views: the crops themselves, and one photo's vector equal through the pipeline and the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import acquire, finetune, index, vectorize
from pipeline.catalog.sources import default_multicrop
from pipeline.catalog.table import read_catalog
from pipeline.common.errors import StageError
from pipeline.encoders.backbones import load_encoder, with_multicrop
from runtime import views
from runtime.embeddings import load_embeddings
from runtime.extractor import load_extractor
from runtime.layout import VIEWS_DIR, Layout
from runtime.preprocess import decode_image
from tests.conftest import assert_uploads_find_their_products, shared_path


def quadrants(side: int) -> np.ndarray:
    """An image whose pixels say where they are: red grows to the right, green downwards, blue is the quadrant."""
    rows, cols = np.mgrid[0:side, 0:side]
    blue = 60 * (2 * (rows >= side // 2) + (cols >= side // 2))
    return np.stack([cols * 255 // side, rows * 255 // side, blue], axis=-1).astype(np.uint8)


def test_views_are_the_whole_image_then_four_corners_and_the_centre_at_full_resolution() -> None:
    image = quadrants(448)
    out = views.views(np.stack([image, image[::-1]]), 0.5)
    assert out.shape == (2 * views.VIEWS, 224, 224, 3) and out.dtype == np.float32
    for n, (top, left) in enumerate(((0, 0), (0, 224), (224, 0), (224, 224), (112, 112)), start=1):
        assert np.array_equal(out[n], image[top:top + 224, left:left + 224])  # no resampling at 448
    assert np.abs(out[0] - image[::2, ::2]).mean() < 3  # the whole image, shrunk
    assert np.array_equal(out[views.VIEWS + 1], image[::-1][:224, :224])  # the second image's views follow
    assert views.input_size(0.5) == 448 and views.input_size(0) == 224


def test_pooling_averages_unit_vectors_per_image() -> None:
    features = np.arange(1, 2 * views.VIEWS * 4 + 1, dtype=np.float32).reshape(2 * views.VIEWS, 4)
    pooled = views.pool(features)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert pooled.shape == (2, 4)
    assert np.allclose(pooled, [unit[:views.VIEWS].mean(0), unit[views.VIEWS:].mean(0)])


@pytest.mark.parametrize("fraction", [-0.5, 1.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float, tiny_hub_model: Path) -> None:
    with pytest.raises(StageError, match="between 0 and 1"):
        with_multicrop(load_encoder(f"hub:{tiny_hub_model}"), fraction)


def test_grocery_pools_views_by_default_and_other_sources_do_not() -> None:
    assert default_multicrop("grocery:/data/grocery") == 0.5
    assert default_multicrop("fashion:/data/shop") == default_multicrop("csv:catalog.csv") == 0.0
    assert default_multicrop(None) == 0.0


@pytest.mark.parametrize("encoder, epochs, off", [
    ("mobilenet-v1-0.25", None, True), ("mobilenet-v1-0.25", 0, False), ("mediapipe-embedder", None, False),
    ("mediapipe-embedder", 3, False), ("hub:/m", None, False), ("hub:/m", 2, True),
    ("mediapipe-embedder+mobilenet-v1-0.25", None, False), ("mediapipe-embedder+hub:/m", 2, False)])
def test_the_multicrop_default_is_off_for_one_trained_backbone(encoder: str, epochs: int | None, off: bool) -> None:
    assert finetune._one_trained_backbone(encoder, epochs) is off


@pytest.fixture(scope="module")
def multicrop_dir(sample_catalog: Path, tiny_hub_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("multicrop")
    acquire.run(f"fashion:{sample_catalog}", data)
    finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=16, epochs=20, multicrop=0.5)
    vectorize.run(data, shard_rows=32)
    index.run(data, trees=4)
    return data


def test_the_extractor_pools_views_and_says_so(multicrop_dir: Path, tiny_hub_model: Path) -> None:
    layout = Layout(multicrop_dir)
    config = json.loads((layout.extractor / "extractor.json").read_text())
    assert config["multicrop"] == 0.5 and config["input_size"] == 448
    assert json.loads(layout.finetune_summary.read_text())["multicrop"] == 0.5
    assert config["encoder_fingerprint"].endswith("-multicrop0.5")  # its own feature cache, never a single view's
    catalog = read_catalog(layout.catalog_csv)
    extractor = load_extractor(layout.extractor)
    paths = [str(layout.catalog / p) for p in catalog["image"][:4]]
    images = np.stack([decode_image(p, 448).numpy() for p in paths])
    assert np.allclose(extractor.embed(images), load_embeddings(multicrop_dir)[:4], atol=1e-4)
    single = load_encoder(f"hub:{tiny_hub_model}")
    whole = np.stack([decode_image(p).numpy() for p in paths])
    pooled = extractor.features(images)
    assert not np.allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                           single(whole) / np.linalg.norm(single(whole), axis=1, keepdims=True), atol=1e-3)


def test_an_uploaded_catalog_photo_finds_its_own_product(multicrop_dir: Path, tmp_path: Path) -> None:
    assert_uploads_find_their_products(multicrop_dir, tmp_path / "cache", [0, 7, 21])


@pytest.fixture(scope="module")
def views_dir(sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("views-in-file")
    acquire.run(f"fashion:{sample_catalog}", data)
    finetune.run(data, encoder="mediapipe-embedder", dim=16, epochs=10, multicrop=0.5, backbone_epochs=0,
                 encoder_weights=str(shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")))
    vectorize.run(data, shard_rows=32)
    index.run(data, trees=4)
    return data


def test_the_mediapipe_embedder_pools_its_views_inside_its_file(views_dir: Path, tmp_path: Path) -> None:
    """Its extractor's backbone file takes the whole 448 image and cuts and pools the six views itself; the
    pipeline's vectors and an upload's through the service are the same."""
    layout = Layout(views_dir)
    config = json.loads((layout.extractor / "extractor.json").read_text())
    assert config["views_in_backbone"] is True and config["input_size"] == 448 and config["multicrop"] == 0.5
    assert config["encoder_fingerprint"].endswith("-multicrop0.5")  # the views cut one by one: the same vectors
    written = sorted((layout.model / VIEWS_DIR).glob("*.tflite"))
    assert len(written) == 1 and written[0].read_bytes() == (layout.extractor / "backbone.tflite").read_bytes()
    catalog = read_catalog(layout.catalog_csv)
    paths = [str(layout.catalog / p) for p in catalog["image"][:4]]
    images = np.stack([decode_image(p, 448).numpy() for p in paths])
    assert np.allclose(load_extractor(layout.extractor).embed(images), load_embeddings(views_dir)[:4], atol=1e-4)
    assert_uploads_find_their_products(views_dir, tmp_path / "cache", [0, 9])
