"""Fine-tune a trainable backbone (MobileNet, hub models) end to end with the trained head on top, on augmented images.

The head is first trained on cached features (`pipeline.training.head`); this step then unfreezes the backbone and
trains backbone + head together for a few epochs at a small learning rate, on images streamed from the catalog with
random crop-zoom, horizontal flip and contrast. Batch normalisation trains too: keeping it frozen lost precision
on fashion (docs/quality.md, "Quality levers"). The epoch whose held-out
images retrieve the training images best (precision@5) is kept. The tuned backbone gets a new fingerprint, so
its features are never mixed with the frozen backbone's in the feature cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encoders.backbones import Encoder, keras_encoder, trainable
from pipeline.training.batches import sample_rows
from pipeline.training.head import retrieval_precision
from runtime import storage, tfenv
from runtime.extractor import tflite_runner
from runtime.preprocess import INPUT_SIZE, decode_image

log = logging.getLogger(__name__)

LEARNING_RATE = 3e-4
# The rebuilt MediaPipe backbone starts from a head that already retrieves well: at MobileNet's rate it first lost
# held-out precision and had not won it back when a smaller rate had gained (docs/quality.md, "Training the
# MediaPipe backbone").
LEARNING_RATES = {"mediapipe-embedder": 1e-4}
BATCH_SIZE = 32
ZOOM = 0.2  # random crops of 80-100% of the image
CONTRAST = 0.2
MONITOR_VAL_ROWS = 1_000
MONITOR_BASE_ROWS = 3_000
CALIBRATION_IMAGES = 512  # catalog images whose activations set a rebuilt backbone's batch statistics


def _images(paths: Sequence[str], labels: np.ndarray | None, batch_size: int, shuffle: bool, seed: int) -> Any:
    """A tf.data pipeline of decoded catalog images (and labels), shuffled each epoch when training."""
    tf = tfenv.tensorflow()
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    data = tf.data.Dataset.zip((files, tf.data.Dataset.from_tensor_slices(labels))) if labels is not None else files
    if shuffle:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    decode = (lambda p, y: (tf.cast(decode_image(p), tf.float32), y)) if labels is not None else \
        (lambda p: tf.cast(decode_image(p), tf.float32))
    return data.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _calibrate(backbone: Any, paths: Sequence[str]) -> None:
    """`mediapipe_keras.calibrate` the graph inside `backbone` on these catalog images."""
    from pipeline.encoders import mediapipe_keras

    keras = tfenv.keras()
    graph = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    pixels = np.concatenate([batch.numpy() for batch in _images(paths, None, 64, False, 0)]) / 255.0
    mediapipe_keras.calibrate(graph, pixels)


def weights_digest(model: Any) -> str:
    """12 hex characters of the sha256 of a Keras model's weights: what a trained model's fingerprint ends with."""
    return storage.sha256_bytes(b"".join(np.asarray(w).tobytes() for w in model.get_weights()))[:12]


def fit_keeping_best(model: Any, epochs: int, data: Callable[[int], Any], score: Callable[[], float] | None,
                     what: str) -> dict[str, list[float]]:
    """Fit `model` one epoch at a time on `data(epoch)`, score it after each (held-out precision@5; None: no
    held-out rows, the last epoch is kept) and leave it with the best epoch's weights; return the history."""
    history: dict[str, list[float]] = {"loss": [], "val_precision_at_5": []}
    best, best_weights = -1.0, None
    for epoch in range(epochs):
        run = model.fit(data(epoch), epochs=1, verbose=0)
        history["loss"].append(float(run.history["loss"][-1]))
        if score is not None:
            value = score()
            history["val_precision_at_5"].append(value)
            log.info("%s epoch %d/%d: loss %.3f, held-out precision@5 %.4f", what, epoch + 1, epochs,
                     history["loss"][-1], value)
            if value > best:
                best, best_weights = value, model.get_weights()
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def tune_backbone(encoder: Encoder, train_model: Any, head: Any, paths: Sequence[str], labels: np.ndarray,
                  fit: np.ndarray, val: np.ndarray, epochs: int, seed: int = 0, tflite_out: Path | None = None
                  ) -> tuple[Encoder, dict]:
    """Train backbone and head together; return the tuned backbone (a new Encoder) and the per-epoch history.

    Args:
        encoder: a backbone with a Keras model, or the MediaPipe embedder's file (`encoders.trainable`).
        train_model: the head's classifier (features -> scaled cosine logits), trained on cached features.
        head: the head's embedding model (features -> unit vectors); shares its layers with `train_model`.
        paths: every catalog image (readable ones).
        labels: integer class per image.
        fit: rows to train on; val: rows to stop on (empty: keep the last epoch).
        epochs: epochs of end-to-end training.
        seed: shuffling and augmentation seed.
        tflite_out: where a TFLite backbone is written back once trained (required for one); vectorize and the
            service then run it as they ran the file.

    Raises:
        ValueError: the encoder cannot be trained, or a TFLite backbone without `tflite_out`.
    """
    source = encoder
    if source.tflite_path is not None and tflite_out is None:
        raise ValueError("a TFLite backbone is trained into a new TFLite file: pass tflite_out")
    encoder = trainable(encoder)
    keras = tfenv.keras()
    if source.tflite_path is not None:  # batch normalisation rebuilt from folded weights: give it real statistics
        _calibrate(encoder.keras_model, np.asarray(paths)[sample_rows(fit, CALIBRATION_IMAGES, seed)])
    keras.utils.set_random_seed(seed)
    backbone = encoder.keras_model
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = True
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
    x = keras.layers.RandomFlip("horizontal", seed=seed)(inputs)
    x = keras.layers.RandomZoom((-ZOOM, 0.0), seed=seed)(x)
    x = keras.layers.RandomContrast(CONTRAST, seed=seed)(x)
    logits = train_model(backbone(x))  # training follows fit(): batch normalisation adapts to the catalog
    model = keras.Model(inputs, logits, name="backbone_and_head")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATES.get(encoder.name, LEARNING_RATE)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    embed = keras.Model(inputs, head(backbone(inputs, training=False)), name="embed")
    paths = np.asarray(paths)
    val_rows, base_rows = sample_rows(val, MONITOR_VAL_ROWS, seed), sample_rows(fit, MONITOR_BASE_ROWS, seed)
    def score() -> float:
        return retrieval_precision(embed.predict(_images(paths[val_rows], None, 64, False, 0), verbose=0),
                                   labels[val_rows],
                                   embed.predict(_images(paths[base_rows], None, 64, False, 0), verbose=0),
                                   labels[base_rows])

    history = fit_keeping_best(model, epochs, lambda epoch: _images(paths[fit], labels[fit], BATCH_SIZE, True,
                                                                    seed + epoch),
                               score if len(val_rows) else None, "backbone")
    backbone.trainable = False
    fingerprint = f"{encoder.fingerprint}-tuned-{weights_digest(backbone)}"
    if source.tflite_path is None:
        return keras_encoder(encoder.name, fingerprint, backbone), history
    from pipeline.encoders import mediapipe_keras

    graph = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))  # the 0..1 graph inside
    written = mediapipe_keras.to_tflite(graph, tflite_out)
    return Encoder(source.name, fingerprint, source.feature_dim, tflite_path=written,
                   _fn=tflite_runner(written)), history
