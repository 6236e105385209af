"""The feature extractor (backbone + trained feature layer + L2 normalisation): export, and one loader for all.

On disk (`model/extractor/`, copied into every index):
- `extractor.json`: format, encoder, dimensions, export id;
- format `savedmodel` (TF-graph backbones): `model/`, one SavedModel with functions `embed` (images -> unit
  vectors), `features` (images -> backbone features) and `head` (features -> unit vectors);
- format `tflite+head` (TFLite backbones): `backbone.tflite` plus `head/`, a SavedModel with `head`.
Images are float32 [B, 224, 224, 3] with values 0..255, as `pipeline.features.decode_image` makes them.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.encoders import INPUT_SIZE, Encoder, tflite_runner

log = logging.getLogger(__name__)

CONFIG = "extractor.json"
FORMATS = ("savedmodel", "tflite+head")


def export(encoder: Encoder, head: Any, out: Path, info: dict) -> dict:
    """Write the extractor for `encoder` and a trained (or raw, normalising) `head` to `out`, replacing it.

    Args:
        encoder: the frozen backbone.
        head: a Keras model from backbone features to unit vectors.
        out: the extractor folder.
        info: extra facts to record in extractor.json (label column, classes, ...).

    Returns:
        The extractor.json content.
    """
    import tensorflow as tf

    out = Path(out)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    images_spec = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="images")
    features_spec = tf.TensorSpec([None, encoder.feature_dim], tf.float32, name="features")
    module = tf.Module()
    module.head_model = head
    module.head = tf.function(lambda f: head(f, training=False), input_signature=[features_spec])
    if encoder.keras_model is not None:
        fmt = "savedmodel"
        module.backbone = encoder.keras_model
        module.features = tf.function(lambda x: encoder.keras_model(x, training=False), input_signature=[images_spec])
        module.embed = tf.function(lambda x: head(encoder.keras_model(x, training=False), training=False),
                                   input_signature=[images_spec])
        tf.saved_model.save(module, str(staging / "model"), signatures={"serving_default": module.embed})
    elif encoder.tflite_path is not None:
        fmt = "tflite+head"
        shutil.copyfile(encoder.tflite_path, staging / "backbone.tflite")
        tf.saved_model.save(module, str(staging / "head"))
    else:
        raise ValueError(f"encoder {encoder.name!r} has neither a Keras model nor a TFLite file to export")
    dim = int(module.head(tf.zeros([1, encoder.feature_dim])).shape[-1])
    config = {"format": fmt, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint,
              "input_size": INPUT_SIZE, "feature_dim": encoder.feature_dim, "dim": dim,
              "export_id": uuid.uuid4().hex, **info}
    storage.write_json(staging / CONFIG, config)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    log.info("exported the %s extractor (%s, %d-d) to %s", encoder.name, fmt, dim, out)
    return config


class Extractor:
    """Images in, unit vectors out: the one way the index, evaluate and the service embed images."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.path = Path(path)
        config_file = self.path / CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a feature extractor (no {CONFIG}); run finetune first")
        self.config = storage.read_json(config_file)
        fmt = self.config.get("format")
        # Concrete functions skip the argument matching of restored tf.functions (~0.5 ms a call).
        if fmt == "savedmodel":
            self._model = tf.saved_model.load(str(self.path / "model"))
            self._features = _concrete(self._model.features)
            self._head = _concrete(self._model.head)
            self._embed = _concrete(self._model.embed)
        elif fmt == "tflite+head":
            self._model = tf.saved_model.load(str(self.path / "head"))
            self._head = _concrete(self._model.head)
            run = tflite_runner(self.path / "backbone.tflite")
            self._features = run
            self._embed = lambda x: self._head(run(np.asarray(x)))
        else:
            raise ValueError(f"{config_file}: unknown extractor format {fmt!r}; expected one of {FORMATS}")
        self.images_seen = 0

    @property
    def dim(self) -> int:
        """Length of the unit vectors."""
        return int(self.config["dim"])

    @property
    def input_size(self) -> int:
        """Side of the square images the extractor takes."""
        return int(self.config["input_size"])

    @property
    def fingerprint(self) -> str:
        """The encoder's weights fingerprint (keys the backbone-feature cache)."""
        return str(self.config["encoder_fingerprint"])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Return unit vectors [B, dim] for images [B, S, S, 3] of 0..255 values (uint8 or float)."""
        self.images_seen += len(images)
        return np.asarray(self._embed(np.asarray(images, np.float32)), dtype=np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the backbone's features [B, feature_dim] (no head)."""
        self.images_seen += len(images)
        return np.asarray(self._features(np.asarray(images, np.float32)), dtype=np.float32)

    def head(self, features: np.ndarray) -> np.ndarray:
        """Return unit vectors for backbone features (no backbone pass)."""
        return np.asarray(self._head(np.asarray(features, np.float32)), dtype=np.float32)


def _concrete(function: Any) -> Any:
    """Return a callable on numpy arrays backed by the one concrete function of a restored tf.function."""
    import tensorflow as tf

    concrete = function.concrete_functions[0]
    dtype = concrete.structured_input_signature[0][0].dtype
    return lambda x: concrete(tf.convert_to_tensor(np.asarray(x), dtype=dtype))


def load_extractor(path: Path) -> Extractor:
    """Load an exported feature extractor folder."""
    return Extractor(path)
