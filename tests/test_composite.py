"""Composite encoders (`--encoder a+b`): a frozen TFLite part beside a trained TF part, pipeline to service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import finetune, index, vectorize
from pipeline.catalog.table import read_catalog
from pipeline.common.errors import StageError
from pipeline.encoders.backbones import with_multicrop
from pipeline.training import composite
from runtime.embeddings import load_embeddings
from runtime.extractor import load_extractor, tflite_runner
from runtime.layout import TUNED_PARTS_DIR, Layout
from runtime.preprocess import decode_image
from tests.conftest import assert_uploads_find_their_products, shared_path


@pytest.fixture(scope="module")
def composite_dir(built: Path, tiny_hub_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built catalog with MediaPipe + the tiny hub model, each trained one epoch with its own head."""
    tflite = shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")
    data = tmp_path_factory.mktemp("composite")
    shutil.copytree(built / "catalog", data / "catalog")
    finetune.run(data, encoder=f"mediapipe-embedder+hub:{tiny_hub_model}", encoder_weights=f"{tflite}+", dim=32,
                 epochs=20, backbone_epochs=1)
    vectorize.run(data, shard_rows=32)
    index.run(data, trees=4)
    return data


def test_parts_are_recorded_trained_where_trainable_and_exported_each_in_its_format(composite_dir: Path) -> None:
    layout = Layout(composite_dir)
    summary = json.loads(layout.finetune_summary.read_text())
    assert [p["backbone_epochs"] for p in summary["parts"]] == [1, 1]
    config = json.loads((layout.extractor / "extractor.json").read_text())
    assert config["format"] == "composite"
    # MediaPipe's trained backbone and its head as one TFLite file, beside the hub model's SavedModel
    assert [(p["format"], p["feature_dim"]) for p in config["parts"]] == [("tflite", 32), ("savedmodel", 32)]
    assert config["feature_dim"] == 32 + 32 and config["dim"] == 32
    assert all("-tuned-" in fingerprint for fingerprint in config["encoder_fingerprint"].split("+"))
    part = layout.extractor / "parts" / "0" / "backbone.tflite"
    assert part.read_bytes() == next((layout.model / TUNED_PARTS_DIR).glob("*-embedding-*.tflite")).read_bytes()


def test_the_extractor_gives_the_index_vectors_and_each_parts_features(composite_dir: Path) -> None:
    layout = Layout(composite_dir)
    catalog = read_catalog(layout.catalog_csv)
    extractor = load_extractor(layout.extractor)
    images = np.stack([decode_image(str(layout.catalog / p)).numpy() for p in catalog["image"][:4]])
    assert np.allclose(extractor.embed(images), load_embeddings(composite_dir)[:4], atol=1e-4)
    part = tflite_runner(next((layout.model / TUNED_PARTS_DIR).glob("*-embedding-*.tflite")))(images)
    features = extractor.features(images)
    assert features.shape == (4, 32 + 32)  # each part's embedding, L2-normalised, side by side
    assert np.allclose(features[:, :32], part / np.linalg.norm(part, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.linalg.norm(features[:, 32:], axis=1), 1.0, atol=1e-5)


def test_an_uploaded_catalog_photo_finds_its_own_product(composite_dir: Path, tmp_path: Path) -> None:
    assert_uploads_find_their_products(composite_dir, tmp_path / "cache", [0, 9])


def test_multicrop_views_pool_the_concatenated_features(tiny_hub_model: Path) -> None:
    parts = composite.load_parts(f"hub:{tiny_hub_model}+hub:{tiny_hub_model}", None)
    pooled = with_multicrop(composite.concatenated(parts), 0.5)
    rng = np.random.default_rng(0)
    features = pooled(rng.integers(0, 255, (2, 448, 448, 3)).astype(np.float32))
    assert pooled.input_size == 448 and features.shape == (2, 2 * parts[0].feature_dim)
    assert pooled.fingerprint.endswith("-multicrop0.5") and "+" in pooled.fingerprint


@pytest.mark.parametrize("weights", ["a.tflite", "a.tflite+b.h5+c.h5"])
def test_one_weights_file_per_backbone(weights: str) -> None:
    with pytest.raises(StageError, match="one per backbone"):
        composite.load_parts("mediapipe-embedder+mobilenet-v1-0.25", weights)
