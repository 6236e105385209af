"""Export the feature extractor (frozen backbone + head) in the format `runtime.extractor` loads, a backbone in the
form it is served in."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encoders.backbones import SERVED_AS_TFLITE, Encoder, as_tflite, pooled_views_tflite, with_multicrop
from pipeline.encoders.mediapipe_keras import one_call_possible
from runtime import storage, tfenv
from runtime.extractor import head_arrays
from runtime.layout import (
    EXTRACTOR_CONFIG,
    EXTRACTOR_HEAD,
    EXTRACTOR_HEAD_ARRAYS,
    EXTRACTOR_PARTS,
    EXTRACTOR_SAVEDMODEL,
    EXTRACTOR_TFLITE,
    SERVED_TFLITE,
    VIEWS_DIR,
)
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)


def served_form(single: Encoder, backbone: Encoder, multicrop: float, model_dir: Path) -> Encoder:
    """The backbone as vectorize and the service run it: one of `SERVED_AS_TFLITE` written as TFLite from its
    single-view Keras graph `single` (`model/backbone.tflite`, or at a multi-crop fraction of 0.5 its views cut and
    pooled inside one file in `model/views/`: the same vectors, so the same fingerprint); any other as it is."""
    if single.name not in SERVED_AS_TFLITE or single.keras_model is None or single.parts:
        return backbone
    if multicrop and one_call_possible(multicrop):
        return pooled_views_tflite(single, multicrop, Path(model_dir) / VIEWS_DIR)
    return with_multicrop(as_tflite(single, Path(model_dir) / SERVED_TFLITE), multicrop)


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
    tf = tfenv.tensorflow()
    out = Path(out)
    staging = out.with_name(f".{out.name}.tmp")
    storage.undo_interrupted_swap(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    images_spec = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="images")
    features_spec = tf.TensorSpec([None, encoder.feature_dim], tf.float32, name="features")
    module = tf.Module()
    module.head_model = head
    module.head = tf.function(lambda f: head(f, training=False), input_signature=[features_spec])
    extra: dict = {}
    if encoder.parts:
        fmt = "composite"
        extra["parts"] = [_export_part(part, staging / EXTRACTOR_PARTS / str(i), images_spec)
                          for i, part in enumerate(encoder.parts)]
        tf.saved_model.save(module, str(staging / EXTRACTOR_HEAD))
    elif encoder.keras_model is not None:
        fmt = "savedmodel"
        module.backbone = encoder.keras_model
        module.features = tf.function(lambda x: encoder.keras_model(x, training=False), input_signature=[images_spec])
        module.embed = tf.function(lambda x: head(encoder.keras_model(x, training=False), training=False),
                                   input_signature=[images_spec])
        tf.saved_model.save(module, str(staging / EXTRACTOR_SAVEDMODEL), signatures={"serving_default": module.embed})
    elif encoder.tflite_path is not None:
        fmt = "tflite+head"
        shutil.copyfile(encoder.tflite_path, staging / EXTRACTOR_TFLITE)
        tf.saved_model.save(module, str(staging / EXTRACTOR_HEAD))
    else:
        raise ValueError(f"encoder {encoder.name!r} has neither a Keras model nor a TFLite file to export")
    dim = int(module.head(tf.zeros([1, encoder.feature_dim])).shape[-1])
    arrays = head_arrays(module.head.get_concrete_function(), lambda f: module.head(tf.constant(f)).numpy())
    if fmt != "savedmodel" and arrays is not None:  # the service can then run it without TensorFlow
        np.savez(staging / EXTRACTOR_HEAD_ARRAYS, **arrays)
    config = {"format": fmt, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint,
              "input_size": encoder.input_size, "multicrop": encoder.multicrop,
              "views_in_backbone": encoder.views_in_backbone, "feature_dim": encoder.feature_dim,
              "dim": dim, **extra,
              "export_id": uuid.uuid4().hex, **info}
    storage.write_json(staging / EXTRACTOR_CONFIG, config)
    storage.swap_in(staging, out)
    log.info("exported the %s extractor (%s, %d-d) to %s", encoder.name, fmt, dim, out)
    return config


def _export_part(part: Encoder, folder: Path, images_spec: Any) -> dict:
    """Write one backbone of a composite encoder (a SavedModel with `features`, or its TFLite file) to `folder`."""
    tf = tfenv.tensorflow()
    folder.mkdir(parents=True)
    if part.keras_model is not None:
        module = tf.Module()
        module.backbone = part.keras_model
        module.features = tf.function(lambda x: part.keras_model(x, training=False), input_signature=[images_spec])
        tf.saved_model.save(module, str(folder / EXTRACTOR_SAVEDMODEL))
    elif part.tflite_path is not None:
        shutil.copyfile(part.tflite_path, folder / EXTRACTOR_TFLITE)
    else:
        raise ValueError(f"part {part.name!r} has neither a Keras model nor a TFLite file to export")
    return {"encoder": part.name, "format": "savedmodel" if part.keras_model is not None else "tflite",
            "feature_dim": part.feature_dim}
