"""EfficientNet-Lite2 trained on the catalog: its top blocks on cached activations, exported as TFLite with the
Keras graph's vectors, and the same network written as a TF Hub model and run through `--encoder hub:DIR`, the
code path of BiT-M, frozen and trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import finetune
from pipeline.encoders import efficientnet_lite, hub_export
from pipeline.encoders.backbones import as_tflite, load_encoder, pooled_views_tflite, with_multicrop
from pipeline.training import lite_tuning
from runtime import tfenv
from runtime.extractor import load_extractor
from runtime.layout import SERVED_TFLITE, Layout
from runtime.preprocess import decode_image
from tests.conftest import shared_path

TOLERANCE = 1e-4  # on unit vectors, what every stage compares


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Eight real catalog photos as 0..255 floats [8, 224, 224, 3]."""
    files = sorted(shared_path("data", "fashion-small", "images").glob("*.jpg"))[::1000][:8]
    return np.stack([decode_image(str(f)).numpy().astype(np.float32) for f in files])


@pytest.fixture(scope="module")
def catalog(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding only the sample catalog, as acquire wrote it."""
    data = tmp_path_factory.mktemp("lite") / "data"
    shutil.copytree(built / "catalog", data / "catalog")
    return data


def test_the_top_blocks_train_and_the_frozen_ones_do_not(catalog: Path, photos: np.ndarray, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(catalog, data)
    frozen = load_encoder("efficientnet-lite2")
    before = {layer.name: [w.copy() for w in layer.get_weights()]
              for layer in lite_tuning._graph(frozen.keras_model).layers if layer.weights}
    tuned = finetune.run(data, encoder="efficientnet-lite2", dim=32, epochs=5, backbone_epochs=1)
    assert tuned["backbone_epochs"] == 1 and len(tuned["backbone_history"]["loss"]) == 1
    assert tuned["encoder_fingerprint"].startswith(frozen.fingerprint + "-tuned-")
    # the exported file is the trained network: compare it with the package's weights, block by block
    config = json.loads((Layout(data).extractor / "extractor.json").read_text())
    assert config["format"] == "tflite+head"
    served = (Layout(data).model / SERVED_TFLITE).read_bytes()
    assert (Layout(data).extractor / "backbone.tflite").read_bytes() == served
    stored = next((Layout(data).tuned_cache).glob("*/backbone.npz"))
    with np.load(stored) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    model = load_encoder("efficientnet-lite2").keras_model
    model.trainable = False
    model.set_weights(weights)
    changed = {layer.name for layer in lite_tuning._graph(model).layers if layer.weights and any(
        not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before[layer.name], strict=True))}
    first = lite_tuning.TRAINED_FROM_BLOCK
    assert {f"block{first}_expand", "head", "head_bn"} <= changed
    assert not {name for name in changed if name.startswith(("stem", "block0_", f"block{first - 1}_"))}
    # vectorize and the service run the TFLite file: the tuned Keras graph's vectors to 1e-4
    extractor = load_extractor(Layout(data).extractor)
    keras_features = model.predict(photos, verbose=0)
    assert np.abs(unit(extractor.features(photos)) - unit(keras_features)).max() < TOLERANCE


def test_the_tflite_file_gives_the_keras_graphs_vectors(photos: np.ndarray, tmp_path: Path) -> None:
    encoder = load_encoder("efficientnet-lite2")
    served = as_tflite(encoder, tmp_path / "lite2.tflite")
    assert served.fingerprint == encoder.fingerprint and served.tflite_path is not None
    assert np.abs(unit(served(photos)) - unit(encoder(photos))).max() < TOLERANCE


def test_the_views_file_gives_the_views_cut_one_by_one(tmp_path: Path) -> None:
    files = sorted(shared_path("data", "grocery", "dataset", "val").rglob("*.jpg"))[::100][:3]
    images = np.stack([decode_image(str(f), 448).numpy().astype(np.float32) for f in files])
    encoder = load_encoder("efficientnet-lite2")
    in_file = pooled_views_tflite(encoder, 0.5, tmp_path)
    cut = with_multicrop(encoder, 0.5)
    assert in_file.fingerprint == cut.fingerprint and in_file.views_in_backbone and in_file.input_size == 448
    assert np.abs(unit(in_file(images)) - unit(cut(images))).max() < 2 * TOLERANCE


@pytest.fixture(scope="module")
def lite2_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hub_export.write_efficientnet_lite2(tmp_path_factory.mktemp("hub") / "efficientnet_lite2")


def test_the_hub_model_through_the_bit_code_path_gives_the_keras_graphs_vectors(lite2_hub: Path,
                                                                                 photos: np.ndarray) -> None:
    hub_encoder = load_encoder(f"hub:{lite2_hub}")  # what --encoder bit-m-r50x1 runs, on a local folder
    assert hub_encoder.feature_dim == efficientnet_lite.FEATURE_DIM
    keras_features = load_encoder("efficientnet-lite2")(photos)
    assert np.abs(unit(hub_encoder(photos)) - unit(keras_features)).max() < TOLERANCE


def test_the_hub_model_trains_through_the_bit_code_path(catalog: Path, lite2_hub: Path, photos: np.ndarray,
                                                        tmp_path: Path) -> None:
    """--backbone-epochs 1 on the hub model: its variables train (batch statistics too), and the exported extractor
    gives what the Keras graph gives with the trained variables."""
    tf = tfenv.tensorflow()
    data = tmp_path / "data"
    shutil.copytree(catalog, data)
    tuned = finetune.run(data, encoder=f"hub:{lite2_hub}", dim=32, epochs=5, backbone_epochs=1)
    assert "-tuned-" in tuned["encoder_fingerprint"]
    saved = tf.saved_model.load(str(Layout(data).extractor / "model"))
    trained = {v.name.split("/", 1)[-1] if v.name.count("/") > 1 else v.name: v.numpy()
               for v in saved.backbone.variables}
    model = efficientnet_lite.build()
    package = {w.name: w.numpy() for w in model.weights}
    for weight in model.weights:
        weight.assign(_match(trained, weight.name))
    assert any(not np.array_equal(package[w.name], w.numpy()) for w in model.weights if "moving_mean" in w.name)
    assert any(not np.array_equal(package[w.name], w.numpy()) for w in model.weights if "kernel" in w.name)
    extractor = load_extractor(Layout(data).extractor)
    theirs = model.predict(photos / 255.0, verbose=0)
    assert np.abs(unit(extractor.features(photos)) - unit(theirs)).max() < TOLERANCE


def _match(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The saved variable whose name ends as a Keras weight's (layer/weight:0)."""
    found = [value for key, value in variables.items() if key.endswith(name) or name.endswith(key)]
    assert len(found) == 1, f"{name}: {len(found)} saved variables match"
    return found[0]
