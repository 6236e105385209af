"""The trained head on a frozen backbone: a feature-vector layer, L2 normalisation and a cosine classifier.

Classification with a normalised softmax (cosine similarity to learned class centres, times a scale) trains
the feature-vector layer so that cosine similarity between embeddings tracks the labels, which is exactly
what the Annoy index measures. Training stops on what the product needs, not on the classifier's loss:
after each epoch the held-out rows query the training rows by cosine similarity, and the weights with the
best precision@5 are kept. (On fashion-small, val_loss bottoms out after ~12 epochs while retrieval keeps
improving for 20 more; label smoothing and larger scales cost 1-2 points of precision@5, so the loss has none.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.features.cache import FeatureCache
from pipeline.training.batches import sample_rows, training_dataset
from runtime import tfenv

log = logging.getLogger(__name__)

DROPOUT = 0.2
SCALE = 10.0
LEARNING_RATE = 1e-3
PATIENCE = 10
MONITOR_K = 5
MONITOR_VAL_ROWS = 5_000
MONITOR_BASE_ROWS = 20_000


def l2_normalize(x: Any) -> Any:
    """L2-normalise the last axis (a named function, so saved models need no lambda source)."""
    tf = tfenv.tensorflow()
    return tf.math.l2_normalize(x, axis=-1)


def retrieval_precision(queries: np.ndarray, query_labels: np.ndarray, base: np.ndarray, base_labels: np.ndarray,
                        k: int = MONITOR_K, chunk: int = 256) -> float:
    """Mean fraction of each query's k most cosine-similar base rows that share its label (unit vectors).

    Queries are scored `chunk` at a time, so the similarity matrix never exceeds chunk x len(base).
    """
    k = min(k, len(base))
    hits = 0.0
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        hits += float((base_labels[top] == query_labels[start:start + chunk, None]).sum())
    return hits / (len(queries) * k)


def _embed(head: Any, features: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """The head's embeddings of some features, computed `chunk` rows at a time (predict() would first copy them
    all into a dataset)."""
    return np.concatenate([head(features[i:i + chunk], training=False).numpy()
                           for i in range(0, len(features), chunk)]) if len(features) else np.zeros((0, 0))


def _retrieval_stopping(head: Any, fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> Any:
    """A Keras callback: log val_precision_at_5 each epoch, stop after PATIENCE epochs without gain, keep the best."""
    keras = tfenv.keras()
    class RetrievalStopping(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.best, self.best_weights, self.wait = -1.0, None, 0

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            score = retrieval_precision(_embed(head, val_x), val_y, _embed(head, fit_x), fit_y)
            logs["val_precision_at_5"] = score
            if score > self.best:
                self.best, self.best_weights, self.wait = score, self.model.get_weights(), 0
            else:
                self.wait += 1
                self.model.stop_training = self.wait >= PATIENCE

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return RetrievalStopping()


def build_head(feature_dim: int, dim: int | None, n_classes: int) -> tuple[Any, Any]:
    """Return (training model, embedding model) sharing one feature-vector layer.

    Args:
        feature_dim: length of the backbone's feature vector.
        dim: length of the embedding (the feature-vector layer); None keeps the raw features (no training).
        n_classes: classes of the classification layer (ignored when `dim` is None).
    """
    keras = tfenv.keras()
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
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return train_model, keras.Model(features, embedding, name="head")


def train_head(cache: FeatureCache, keys: Sequence[str], labels: np.ndarray, train_rows: np.ndarray,
               val_rows: np.ndarray, dim: int, epochs: int = 100, batch_size: int = 128,
               seed: int = 0) -> tuple[Any, Any, dict]:
    """Train the head on features streamed from the cache; return (classifier, embedding model, history).

    Memory is bounded whatever the catalog's size: training batches stream out of the cache (see
    `pipeline.training.batches`), and early stopping measures precision@5 of at most MONITOR_VAL_ROWS held-out
    rows against at most MONITOR_BASE_ROWS training rows (all of them in a catalog below those sizes).

    Args:
        cache: the feature cache holding every row's image.
        keys: image sha256 of each catalog row [N].
        labels: integer class of each row [N].
        train_rows: rows to fit on.
        val_rows: rows to stop early on (may be empty: then training runs a fixed number of epochs).
        dim: length of the embedding.
        epochs: the most epochs.
        batch_size: rows per step.
        seed: seeds the initial weights and the shuffling.
    """
    keras = tfenv.keras()
    keras.utils.set_random_seed(seed)
    keys = np.asarray(keys, dtype="S64")
    n_classes = int(labels.max()) + 1
    train_model, head = build_head(int(cache.feature_dim), dim, n_classes)
    dataset = training_dataset(cache, keys[train_rows], labels[train_rows], batch_size, seed)
    callbacks, validation = [], None
    if len(val_rows):
        val = sample_rows(val_rows, MONITOR_VAL_ROWS, seed)
        base = sample_rows(train_rows, MONITOR_BASE_ROWS, seed)
        val_x = cache.get(keys[val])
        validation = (val_x, labels[val])
        callbacks.append(_retrieval_stopping(head, cache.get(keys[base]), labels[base], val_x, labels[val]))
    else:
        epochs = min(epochs, 30)
    history = train_model.fit(dataset, validation_data=validation, epochs=epochs, callbacks=callbacks, verbose=0)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    monitored = hist.get("val_precision_at_5")
    best = int(np.argmax(monitored)) if monitored else len(hist["loss"]) - 1
    log.info("head trained %d epochs (best %d): train acc %.3f%s", len(hist["loss"]), best + 1,
             hist["accuracy"][best], f", val precision@5 {monitored[best]:.3f}" if monitored else "")
    return train_model, head, hist
