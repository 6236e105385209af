"""Training the backbone itself after the head: new weights, a new fingerprint, features computed again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import finetune, index, vectorize
from runtime.extractor import load_extractor
from runtime.layout import Layout
from runtime.preprocess import decode_image
from tests.conftest import shared_path


def test_a_tuned_backbone_gets_new_weights_and_its_own_feature_cache(built: Path, tiny_hub_model: Path,
                                                                     tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    frozen = finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=20)
    image = decode_image(str(next((data / "catalog" / "images").rglob("*.jpg"))))[None].numpy()
    before = load_extractor(Layout(data).extractor).embed(image)
    tuned = finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=20, backbone_epochs=2)
    assert tuned["backbone_epochs"] == 2 and len(tuned["backbone_history"]["loss"]) == 2
    assert tuned["encoder_fingerprint"].startswith(frozen["encoder_fingerprint"] + "-tuned-")
    assert tuned["backbone_images_computed"] == 0  # the head's first step still reads the frozen features
    extractor = load_extractor(Layout(data).extractor)
    assert extractor.fingerprint == tuned["encoder_fingerprint"]
    assert not np.allclose(extractor.embed(image), before, atol=1e-4)
    summary = vectorize.run(data)  # the tuned backbone's features are computed, never taken from the frozen ones
    assert summary["backbone_images_computed"] == summary["rows"] - summary.get("unreadable", 0)
    assert (Layout(data).features(tuned["encoder_fingerprint"])).is_dir()
    assert index.run(data, trees=4)["encoder_fingerprint"] == tuned["encoder_fingerprint"]


def test_a_tflite_backbone_cannot_be_tuned(built: Path, tmp_path: Path) -> None:
    weights = shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        finetune.run(data, encoder="mediapipe-embedder", encoder_weights=str(weights), backbone_epochs=1)
