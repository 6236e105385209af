"""The trained head on a frozen backbone: a feature-vector layer, L2 normalisation and a cosine classifier.

Classification with a normalised softmax (cosine similarity to learned class centres, times a scale) trains
the feature-vector layer so that cosine similarity between embeddings tracks the labels, which is exactly
what the Annoy index measures.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DROPOUT = 0.25
SCALE = 16.0
LABEL_SMOOTHING = 0.1
LEARNING_RATE = 1e-3
PATIENCE = 8


def l2_normalize(x: Any) -> Any:
    """L2-normalise the last axis (a named function, so saved models need no lambda source)."""
    import tensorflow as tf

    return tf.math.l2_normalize(x, axis=-1)


def build_head(feature_dim: int, dim: int | None, n_classes: int) -> tuple[Any, Any]:
    """Return (training model, embedding model) sharing one feature-vector layer.

    Args:
        feature_dim: length of the backbone's feature vector.
        dim: length of the embedding (the feature-vector layer); None keeps the raw features (no training).
        n_classes: classes of the classification layer (ignored when `dim` is None).
    """
    import tf_keras as keras

    features = keras.Input((feature_dim,), name="features")
    x = keras.layers.Lambda(l2_normalize, name="features_l2")(features)
    if dim is None:
        return None, keras.Model(features, x, name="raw_head")
    x = keras.layers.Dropout(DROPOUT, name="dropout")(x)
    x = keras.layers.Dense(dim, name="feature_vector")(x)
    embedding = keras.layers.Lambda(l2_normalize, name="embedding")(x)
    centres = keras.layers.Dense(n_classes, use_bias=False, name="class_centres",
                                 kernel_constraint=keras.constraints.UnitNorm(axis=0))
    logits = keras.layers.Lambda(lambda z: z * SCALE, name="scaled_cosine")(centres(embedding))
    train_model = keras.Model(features, logits, name="classifier")
    train_model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=LABEL_SMOOTHING),
                        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return train_model, keras.Model(features, embedding, name="head")


def train_head(features: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
               dim: int, epochs: int = 200, batch_size: int = 128, seed: int = 0) -> tuple[Any, dict]:
    """Train the head on cached features and return (embedding model, history).

    Args:
        features: backbone features [N, F].
        labels: integer class of each row [N].
        train_rows: rows to fit on.
        val_rows: rows to stop early on (may be empty: then training runs a fixed number of epochs).
        dim: length of the embedding.
        epochs: the most epochs.
        batch_size: rows per step.
        seed: seeds the initial weights and the shuffling.
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    n_classes = int(labels.max()) + 1
    train_model, head = build_head(features.shape[1], dim, n_classes)
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    callbacks, validation = [], None
    if len(val_rows):
        validation = (features[val_rows], onehot[val_rows])
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE,
                                                       restore_best_weights=True))
    else:
        epochs = min(epochs, 30)
    history = train_model.fit(features[train_rows], onehot[train_rows], validation_data=validation, epochs=epochs,
                              batch_size=batch_size, callbacks=callbacks, verbose=0)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best = int(np.argmin(hist["val_loss"])) if "val_loss" in hist else len(hist["loss"]) - 1
    log.info("head trained %d epochs (best %d): train acc %.3f%s", len(hist["loss"]), best + 1,
             hist["accuracy"][best], f", val acc {hist['val_accuracy'][best]:.3f}" if "val_accuracy" in hist else "")
    return head, hist
