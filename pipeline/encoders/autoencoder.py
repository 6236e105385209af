"""The convolutional auto-encoder encoder: trained on the catalog itself, so it needs no weights to download.

Encoder: conv + ReLU + max-pool blocks; decoder: 2x2 stride-2 transposed convolutions; loss: MSE of the
reconstruction. The encoder's flattened bottleneck (8 x 8 x 16 = 1024 values) is the feature vector.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime import tfenv
from runtime.preprocess import INPUT_SIZE, decode_image

log = logging.getLogger(__name__)

AE_SIZE = 64
FILTERS = (16, 32, 64)
BOTTLENECK_CHANNELS = 16


def build_core() -> Any:
    """Return the encoder over [0, 1] images of AE_SIZE x AE_SIZE: conv+ReLU+pool blocks, then a flat code."""
    keras = tfenv.keras()
    inputs = keras.Input((AE_SIZE, AE_SIZE, 3))
    x = inputs
    for i, filters in enumerate(FILTERS):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"enc_conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc_pool{i}")(x)
    x = keras.layers.Conv2D(BOTTLENECK_CHANNELS, 1, activation="relu", name="enc_bottleneck")(x)
    return keras.Model(inputs, keras.layers.Flatten(name="code")(x), name="ae_encoder")


def build_autoencoder(core: Any) -> Any:
    """Return encoder + decoder (transposed convolutions back to the input size, sigmoid output)."""
    keras = tfenv.keras()
    side = AE_SIZE // 2 ** len(FILTERS)
    inputs = keras.Input((AE_SIZE, AE_SIZE, 3))
    x = keras.layers.Reshape((side, side, BOTTLENECK_CHANNELS))(core(inputs))
    for i, filters in enumerate(reversed(FILTERS)):
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, activation="relu", name=f"dec_up{i}")(x)
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="dec_out")(x)
    return keras.Model(inputs, outputs, name="autoencoder")


def _shrink(images: Any) -> Any:
    """Resize 0..255 images to the auto-encoder's input, antialiased, and scale them to [0, 1]."""
    tf = tfenv.tensorflow()
    return tf.image.resize(images, [AE_SIZE, AE_SIZE], antialias=True) / 255.0


def encoder_model(core: Any, input_size: int = INPUT_SIZE) -> Any:
    """Wrap the core so that it takes the pipeline's 0..255 images of `input_size`."""
    keras = tfenv.keras()
    inputs = keras.Input((input_size, input_size, 3), name="images")
    return keras.Model(inputs, core(keras.layers.Lambda(_shrink, name="shrink")(inputs)), name="autoencoder_backbone")


def load_encoder_model(weights: Path) -> Any:
    """Rebuild the encoder and load trained weights saved by `train`."""
    core = build_core()
    core.load_weights(str(weights))
    return encoder_model(core)


def train(image_paths: list[str], out: Path, epochs: int = 15, batch_size: int = 64, max_images: int = 20000,
          seed: int = 0) -> dict[str, list[float]]:
    """Train the auto-encoder on catalog images and save the encoder's weights.

    Args:
        image_paths: JPEG files (the acquired catalog).
        out: the `.weights.h5` file to write.
        epochs: the most epochs; training stops early when the held-out reconstruction stops improving.
        batch_size: images per step.
        max_images: a random sample of at most this many images is used (memory: 48 KiB each).
        seed: random seed of the sample, the split and the initial weights.

    Returns:
        The Keras training history (loss and val_loss per epoch).
    """
    tf, keras = tfenv.tensorflow(), tfenv.keras()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    paths = list(image_paths)
    if len(paths) > max_images:
        paths = [paths[i] for i in rng.choice(len(paths), max_images, replace=False)]
    small = tf.data.Dataset.from_tensor_slices(paths).map(lambda p: _shrink(decode_image(p)),
                                                          num_parallel_calls=tf.data.AUTOTUNE)
    images = np.stack(list(small.as_numpy_iterator())).astype(np.float32)
    order = rng.permutation(len(images))
    n_val = max(1, len(images) // 10)
    val, fit = images[order[:n_val]], images[order[n_val:]]
    core = build_core()
    model = build_autoencoder(core)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    log.info("training the auto-encoder on %d images (%d held out)", len(fit), len(val))
    history = model.fit(fit, fit, validation_data=(val, val), epochs=epochs, batch_size=batch_size,
                        callbacks=[stop], verbose=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    core.save_weights(str(out))
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
