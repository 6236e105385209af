"""The MediaPipe embedder rebuilt as a Keras graph: the file's vectors on real photos, and back to TFLite after
training (issue 24's first step: the backbone becomes trainable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common.errors import StageError
from pipeline.encoders import mediapipe_keras
from runtime import tfenv, views
from runtime.extractor import tflite_runner
from tests.conftest import shared_path

TOLERANCE = 1e-4  # on L2-normalised vectors, what every stage compares


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embedder_file() -> Path:
    return shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Sixteen real catalog photos as 0..255 floats [16, 224, 224, 3]."""
    files = sorted(shared_path("data", "fashion-small", "images").glob("*.jpg"))[::500][:16]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224)), np.float32) for f in files])


def test_the_keras_graph_gives_the_files_vectors(embedder_file: Path, photos: np.ndarray) -> None:
    model = mediapipe_keras.build(embedder_file)
    ours = model.predict(photos / 255.0, verbose=0)
    theirs = tflite_runner(embedder_file)(photos)
    assert ours.shape == theirs.shape == (len(photos), mediapipe_keras.EMBEDDING_DIM)
    assert np.abs(unit(ours) - unit(theirs)).max() < TOLERANCE
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()  # raw too, not only in direction


def test_a_trained_graph_goes_back_to_tflite_with_the_same_vectors(embedder_file: Path, photos: np.ndarray,
                                                                   tmp_path: Path) -> None:
    tf, keras = tfenv.tensorflow(), tfenv.keras()
    model = mediapipe_keras.build(embedder_file)
    before = model.predict(photos / 255.0, verbose=0)
    pixels = tf.constant(photos / 255.0, tf.float32)
    targets = tf.constant(unit(np.roll(before, 1, axis=0)), tf.float32)  # pull each photo towards another's vector
    optimizer = keras.optimizers.SGD(0.05)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(tf.reduce_sum(tf.math.l2_normalize(model(pixels, training=True), 1) * targets, 1))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables,
                                      strict=True))
    after = model.predict(photos / 255.0, verbose=0)
    assert np.abs(unit(after) - unit(before)).max() > 10 * TOLERANCE  # it trained
    exported = mediapipe_keras.to_tflite(model, tmp_path / "tuned.tflite")
    again = tflite_runner(exported)(photos)
    assert np.abs(unit(again) - unit(after)).max() < TOLERANCE


def test_another_tflite_file_is_refused(tmp_path: Path) -> None:
    tf, keras = tfenv.tensorflow(), tfenv.keras()
    inputs = keras.Input((224, 224, 3))
    small = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs)))
    path = tmp_path / "other.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(small).convert())
    with pytest.raises(StageError, match="is not the MediaPipe MobileNetV3-small"):
        mediapipe_keras.build(path)


def test_calibration_gives_batch_norm_real_statistics_and_keeps_the_vectors(embedder_file: Path,
                                                                            photos: np.ndarray) -> None:
    """Training mode normalises by the batch's statistics: with the folded file's identity statistics that would
    start training from another function; after calibration it starts from the file's."""
    tf = tfenv.tensorflow()
    uncalibrated = mediapipe_keras.build(embedder_file)  # a call in training mode moves its moving statistics
    training_before = unit(uncalibrated(tf.constant(photos / 255.0, tf.float32), training=True).numpy())
    model = mediapipe_keras.build(embedder_file)
    inference = unit(model.predict(photos / 255.0, verbose=0))
    mediapipe_keras.calibrate(model, photos / 255.0, batch_size=8)
    assert np.abs(unit(model.predict(photos / 255.0, verbose=0)) - inference).max() < TOLERANCE
    training_after = unit(model(tf.constant(photos / 255.0, tf.float32), training=True).numpy())
    before, after = (training_before * inference).sum(1).min(), (training_after * inference).sum(1).min()
    assert after > 0.99 and after > before, (before, after)
    print(f"lowest cosine of a training-mode vector to the file's: {before:.3f} before calibration, {after:.4f} "
          "after")



def test_the_views_file_pools_the_views_that_runtime_views_cuts(embedder_file: Path, photos: np.ndarray,
                                                               tmp_path: Path) -> None:
    """The file that cuts and pools the six views itself gives the vectors of the views cut one by one by
    `runtime.views` and run through the embedder file, batch by batch and one image at a time."""
    images = np.stack([np.asarray(Image.fromarray(p.astype(np.uint8)).resize((448, 448)), np.float32)
                       for p in photos[:6]])
    inside = tflite_runner(mediapipe_keras.views_tflite(embedder_file, 0.5, tmp_path / "views.tflite"))
    pooled = inside(images)
    assert pooled.shape == (6, mediapipe_keras.EMBEDDING_DIM)
    cut = views.multicrop(tflite_runner(embedder_file), 0.5)(images)
    assert np.abs(pooled - cut).max() < 2 * TOLERANCE  # each view through the rebuilt graph: within 1e-4
    assert np.array_equal(inside(images[2:3])[0], pooled[2])
    assert mediapipe_keras.one_call_possible(0.5) and not mediapipe_keras.one_call_possible(0.6)
    with pytest.raises(ValueError, match=r"cut by runtime.views"):
        mediapipe_keras.views_tflite(embedder_file, 0.6, tmp_path / "other.tflite")
