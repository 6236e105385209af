"""Train EfficientNet-Lite2's top blocks with the head, on activations computed once.

Training the whole of Lite2 costs about fifteen times the MediaPipe embedder per image, hours on a CPU for a few
epochs. The blocks below `TRAINED_FROM_BLOCK` stay frozen, so their output for an image never changes: it is
computed once per catalog image (one pass of the frozen part, stored as float16 in memory), and each epoch then
runs only the top blocks and the head, forwards and backwards. Augmentation happens where the cache allows it: a
random horizontal flip of the activation maps (a flipped image's maps are close to flipped maps; the crops and
contrast changes of `pipeline.training.backbone_tuning` would need the frozen part again). Batch normalisation of
the trained blocks trains too. The epoch whose held-out images retrieve the training images best (precision@5) is
kept, and its weights are copied into the whole network, which keeps the frozen backbone's layout (so
`pipeline.training.tuned_cache` stores and restores it as any other Keras backbone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.encoders import efficientnet_lite
from pipeline.encoders.backbones import Encoder, keras_encoder
from pipeline.training.backbone_tuning import fit_keeping_best, weights_digest
from pipeline.training.batches import sample_rows
from pipeline.training.head import retrieval_precision
from runtime import tfenv
from runtime.preprocess import decode_image

log = logging.getLogger(__name__)

TRAINED_FROM_BLOCK = 15  # the last two stages (blocks 15-20) and the head convolution train
LEARNING_RATE = 3e-4
BATCH_SIZE = 32
MONITOR_VAL_ROWS = 1_000
MONITOR_BASE_ROWS = 3_000
RECIPE = {"from_block": TRAINED_FROM_BLOCK, "learning_rate": LEARNING_RATE, "batch": BATCH_SIZE,
          "augment": "flip-maps", "monitor": [MONITOR_VAL_ROWS, MONITOR_BASE_ROWS]}


def handles(encoder: Encoder) -> bool:
    """Whether this module trains the encoder (EfficientNet-Lite2, one view)."""
    return encoder.name == efficientnet_lite.NAME and encoder.keras_model is not None and not encoder.multicrop


def _graph(backbone: Any) -> Any:
    """The Lite2 graph inside a backbone from `backbones.load_encoder` (0..255 images -> features)."""
    keras = tfenv.keras()
    return next(layer for layer in backbone.layers if isinstance(layer, keras.Model))


def bottom_activations(bottom: Any, paths: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The frozen part's output for every image, float16 [N, H, W, C], in `paths` order."""
    tf = tfenv.tensorflow()
    data = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda p: tf.cast(decode_image(p), tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE
    ).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    run = tf.function(lambda x: tf.cast(bottom(x, training=False), tf.float16))
    out = np.empty((len(paths), *bottom.output_shape[1:]), np.float16)
    done = 0
    with tqdm(total=len(paths), desc="frozen blocks", unit="img", leave=False) as bar:
        for batch in data:
            values = run(batch).numpy()
            out[done:done + len(values)] = values
            done += len(values)
            bar.update(len(values))
    return out


def tune_top(encoder: Encoder, train_model: Any, head: Any, paths: Sequence[str], labels: np.ndarray,
             fit: np.ndarray, val: np.ndarray, epochs: int, seed: int = 0, tflite_out: Any = None
             ) -> tuple[Encoder, dict]:
    """Train Lite2's top blocks and the head together on cached activations; return the tuned backbone.

    Arguments and result as `pipeline.training.backbone_tuning.tune_backbone` (`tflite_out` is not used: the
    result is a Keras backbone).

    Raises:
        ValueError: the encoder is not EfficientNet-Lite2 (`handles`).
    """
    if not handles(encoder):
        raise ValueError(f"lite_tuning trains {efficientnet_lite.NAME} only, not {encoder.name!r}")
    tf, keras = tfenv.tensorflow(), tfenv.keras()
    keras.utils.set_random_seed(seed)
    state = efficientnet_lite.load_state()
    bottom = efficientnet_lite.build(state, end_block=TRAINED_FROM_BLOCK, name="lite2_bottom")
    top = efficientnet_lite.build(state, first_block=TRAINED_FROM_BLOCK, name="lite2_top")
    graph = _graph(encoder.keras_model)
    for layer in top.layers:  # start from the backbone as it is (the package's weights, or a stored training)
        if layer.weights:
            layer.set_weights(graph.get_layer(layer.name).get_weights())
    paths = np.asarray(paths)
    val_rows, base_rows = sample_rows(val, MONITOR_VAL_ROWS, seed), sample_rows(fit, MONITOR_BASE_ROWS, seed)
    needed = np.unique(np.concatenate([fit, val_rows, base_rows]))
    position = np.full(len(paths), -1)
    position[needed] = np.arange(len(needed))
    cached = bottom_activations(bottom, paths[needed])
    log.info("%s: the frozen blocks' output for %d images is cached (%.0f MB)", encoder.name, len(needed),
             cached.nbytes / 2**20)
    top.trainable = True
    maps = keras.Input(cached.shape[1:], name="maps")
    flipped = keras.layers.RandomFlip("horizontal", seed=seed)(maps)
    model = keras.Model(maps, train_model(top(flipped)), name="top_and_head")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    embed = tf.function(lambda x: head(top(tf.cast(x, tf.float32), training=False), training=False))

    def embedded(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([embed(cached[position[rows[i:i + 256]]]).numpy() for i in range(0, len(rows), 256)])

    def score() -> float:
        return retrieval_precision(embedded(val_rows), labels[val_rows], embedded(base_rows), labels[base_rows])

    fit_maps, fit_labels = cached[position[fit]], labels[fit]

    def epoch_data(epoch: int) -> Any:
        order = np.random.default_rng(seed + epoch).permutation(len(fit))
        return tf.data.Dataset.from_tensor_slices((fit_maps[order], fit_labels[order])).map(
            lambda x, y: (tf.cast(x, tf.float32), y)).batch(BATCH_SIZE).prefetch(2)

    history = fit_keeping_best(model, epochs, epoch_data, score if len(val_rows) else None, "top blocks")
    for layer in top.layers:
        if layer.weights:
            graph.get_layer(layer.name).set_weights(layer.get_weights())
    backbone = encoder.keras_model
    backbone.trainable = False
    return keras_encoder(encoder.name, f"{encoder.fingerprint}-tuned-{weights_digest(backbone)}", backbone), history
