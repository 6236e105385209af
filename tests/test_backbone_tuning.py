"""Training the backbone itself after the head: new weights, a new fingerprint, features computed again."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline import finetune, index, vectorize
from runtime.extractor import load_extractor
from runtime.layout import TUNED_TFLITE, VIEWS_DIR, Layout
from runtime.preprocess import decode_image
from service import create_app
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


def test_the_mediapipe_backbone_is_tuned_and_served_as_tflite(built: Path, tmp_path: Path) -> None:
    """The MediaPipe file is rebuilt as a Keras graph, trained, written back to TFLite, and the extractor, vectorize
    and the service run that file as they ran the original (here cutting and pooling its multi-crop views
    inside the file, as grocery's default does)."""
    weights = shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    tuned = finetune.run(data, encoder="mediapipe-embedder", encoder_weights=str(weights), dim=32, epochs=10,
                         backbone_epochs=1, multicrop=0.5)
    assert tuned["backbone_epochs"] == 1 and tuned["encoder_fingerprint"].startswith("mediapipe-")
    assert "-tuned-" in tuned["encoder_fingerprint"] and tuned["encoder_fingerprint"].endswith("-multicrop0.5")
    config = json.loads((Layout(data).extractor / "extractor.json").read_text())
    assert config["format"] == "tflite+head"  # served as the original file is, by the TFLite interpreter
    assert config["views_in_backbone"] and config["input_size"] == 448
    assert (Layout(data).model / TUNED_TFLITE).read_bytes() != weights.read_bytes()
    in_file, = (Layout(data).model / VIEWS_DIR).glob("*-tuned-*.tflite")  # the tuned file's views
    assert (Layout(data).extractor / "backbone.tflite").read_bytes() == in_file.read_bytes()
    vectorize.run(data)
    index.run(data, trees=4)
    client = create_app({"ARTIFACTS": str(data / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                         "RELOAD_CHECK_S": 0, "ARTIFACTS_CACHE": str(tmp_path / "cache")}).test_client()
    photo = next((data / "catalog" / "images").rglob("*.jpg"))
    found = client.post("/api/search", data={"image": (io.BytesIO(photo.read_bytes()), "q.jpg")},
                        content_type="multipart/form-data")
    assert found.status_code == 200 and len(found.get_json()["results"]) == 10


def test_a_tflite_file_of_another_model_cannot_be_tuned(built: Path, tmp_path: Path) -> None:
    from pipeline.encoders.backbones import Encoder, can_train

    weights = shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")
    assert not can_train(Encoder("some-tflite", "x", 8, tflite_path=weights))
    assert can_train(Encoder("mediapipe-embedder", "x", 1024, tflite_path=weights))
    assert not can_train(Encoder("mediapipe-embedder", "x", 1024, tflite_path=weights, multicrop=0.8))


def test_a_trained_backbone_is_kept_for_a_rerun_and_for_a_composite_part(built: Path, tiny_hub_model: Path,
                                                                         tmp_path: Path) -> None:
    """`cache/tuned` keeps a head and its tuned backbone under a key of everything that trained them: going back
    to options tried before, or a composite whose part was trained alone, loads them instead of training."""
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    hub = f"hub:{tiny_hub_model}"
    image = decode_image(str(next((data / "catalog" / "images").rglob("*.jpg"))))[None].numpy()
    first = finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1)
    assert first["backbone_reused"] is False
    entry, = Layout(data).tuned_cache.iterdir()
    trained = load_extractor(Layout(data).extractor).embed(image)
    finetune.run(data, encoder=hub, dim=32, epochs=20)  # other options: the head alone trains, nothing is kept
    assert list(Layout(data).tuned_cache.iterdir()) == [entry]

    again = finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1)
    assert again["reused"] is False and again["backbone_reused"] is True  # a new model, from the kept training
    assert again["encoder_fingerprint"] == first["encoder_fingerprint"]
    assert again["backbone_history"] == first["backbone_history"] and again["epochs"] == first["epochs"]
    assert np.allclose(load_extractor(Layout(data).extractor).embed(image), trained, atol=1e-6)

    both = finetune.run(data, encoder=f"{hub}+{hub}", dim=32, epochs=20, backbone_epochs=1)
    assert [p["reused"] for p in both["parts"]] == [True, True]  # each part is the backbone trained above
    features = load_extractor(Layout(data).extractor).features(image)
    assert np.allclose(features[:, :32], trained, atol=1e-5) and np.allclose(features[:, 32:], trained, atol=1e-5)

    fresh = finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1, retrain="always")
    assert fresh["backbone_reused"] is False and list(Layout(data).tuned_cache.iterdir()) == [entry]


def test_a_damaged_kept_backbone_is_trained_again(built: Path, tiny_hub_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    hub = f"hub:{tiny_hub_model}"
    first = finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1)
    entry, = Layout(data).tuned_cache.iterdir()
    with np.load(entry / "backbone.npz") as saved:
        np.savez(entry / "backbone.npz", *[saved[name] + 1.0 for name in saved.files])
    finetune.run(data, encoder=hub, dim=32, epochs=20)
    again = finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1)
    assert again["backbone_reused"] is False  # the weights did not match the fingerprint they were kept with
    assert again["encoder_fingerprint"].startswith(first["encoder_fingerprint"].rsplit("-tuned-", 1)[0] + "-tuned-")
    assert finetune.run(data, encoder=hub, dim=32, epochs=20, backbone_epochs=1, retrain="never")["reused"] is True
