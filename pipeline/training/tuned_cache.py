"""Trained backbones kept between runs: a head plus a tuned backbone, keyed by everything that trained them.

Training a backbone end to end is the costliest step of the pipeline (minutes per epoch on a CPU), and a
merchandiser meets the same training again: trying `--encoder a` then `a+b` (the composite trains its part `a` as
the single backbone was trained), or going back to options tried the day before. finetune then loads the result
from `cache/tuned/<key>/` instead of training again. The key digests the frozen backbone, the features the head
trained on, the images in catalog order, their labels, the split, the head's and the backbone's options and the
training recipe's constants, so any change to what training would see trains again. A stored backbone is checked
against the fingerprint it was saved with before it is used. Like the rest of `cache/`, the folder is safe to
delete; `--retrain always` trains again and replaces the entry.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encoders.backbones import Encoder, keras_encoder, trainable
from pipeline.features.cache import FeatureCache
from pipeline.training import backbone_tuning, head, lite_tuning
from pipeline.training.backbone_tuning import tune_backbone, weights_digest
from pipeline.training.head import build_head, train_head
from runtime import storage
from runtime.extractor import tflite_runner

log = logging.getLogger(__name__)

META = "trained.json"
HEAD_WEIGHTS = "head.npz"
BACKBONE_WEIGHTS = "backbone.npz"
BACKBONE_TFLITE = "backbone.tflite"
# Bump when training changes in a way the constants below do not show, so old entries are not reused.
RECIPE_VERSION = 1


@dataclass
class Trained:
    """A head and the backbone tuned with it.

    Attributes:
        head: the embedding model (backbone features to unit vectors).
        backbone: the tuned backbone (a Keras model, or a TFLite file at the `tflite_out` asked for).
        history: the head's per-epoch history (`pipeline.training.head.train_head`).
        tuning: the backbone's per-epoch history (`pipeline.training.backbone_tuning.tune_backbone`).
        reused: loaded from the cache rather than trained.
    """

    head: Any
    backbone: Encoder
    history: dict
    tuning: dict
    reused: bool


def training_key(source: Encoder, features_fingerprint: str, keys: list[str], labels: np.ndarray, fit: np.ndarray,
                 val: np.ndarray, dim: int, epochs: int, backbone_epochs: int, seed: int) -> str:
    """The digest of everything that decides what `head_and_backbone` trains (32 hex characters)."""
    recipe = {
        "version": RECIPE_VERSION, "source": source.fingerprint, "features": features_fingerprint, "dim": dim,
        "epochs": epochs, "backbone_epochs": backbone_epochs, "seed": seed,
        "head": [head.LEARNING_RATE, head.DROPOUT, head.SCALE, head.PATIENCE, head.MONITOR_K,
                 head.MONITOR_VAL_ROWS, head.MONITOR_BASE_ROWS],
        "backbone": [backbone_tuning.LEARNING_RATES.get(source.name, backbone_tuning.LEARNING_RATE),
                     backbone_tuning.BATCH_SIZE, backbone_tuning.ZOOM, backbone_tuning.CONTRAST,
                     backbone_tuning.MONITOR_VAL_ROWS, backbone_tuning.MONITOR_BASE_ROWS,
                     backbone_tuning.CALIBRATION_IMAGES],
    }
    if lite_tuning.handles(source):
        recipe["backbone"] = lite_tuning.RECIPE
    parts = [json.dumps(recipe, sort_keys=True).encode(), "\n".join(keys).encode()]
    parts += [np.asarray(a, np.int64).tobytes() for a in (labels, fit, val)]
    return storage.sha256_bytes(b"\0".join(parts))[:32]


def head_and_backbone(source: Encoder, cache: FeatureCache, features_fingerprint: str, keys: list[str],
                      paths: list[str], labels: np.ndarray, fit: np.ndarray, val: np.ndarray, dim: int, epochs: int,
                      backbone_epochs: int, seed: int, store: Path, tflite_out: Path | None = None,
                      reuse: bool = True) -> Trained:
    """Train a head on cached features, then backbone and head together; or load that result from `store`.

    Args:
        source: the frozen backbone (`pipeline.encoders.backbones.can_train`).
        cache: the features the head trains on; features_fingerprint: their encoder's fingerprint (the backbone's,
            or its multi-crop views').
        keys, paths: the catalog's readable images; labels, fit, val: classes and the split.
        dim, epochs: the head's embedding length and most epochs; backbone_epochs: end-to-end epochs (> 0).
        seed: seeds the head, the shuffling and the augmentation.
        store: the cache folder (`cache/tuned`); one subfolder per training key.
        tflite_out: where a TFLite backbone's tuned file is written (required for one).
        reuse: False trains even when the store holds this training (and replaces the entry).
    """
    key = training_key(source, features_fingerprint, keys, labels, fit, val, dim, epochs, backbone_epochs, seed)
    folder = Path(store) / key
    if reuse:
        loaded = _load(folder, source, cache.feature_dim, int(labels.max()) + 1, dim, tflite_out)
        if loaded is not None:
            log.info("%s: the head and the backbone trained on these images, labels and options are in %s; not "
                     "training again", source.name, folder)
            return loaded
    classifier, head_model, history = train_head(cache, keys, labels, fit, val, dim, epochs=epochs, seed=seed)
    tune = lite_tuning.tune_top if lite_tuning.handles(source) else tune_backbone
    tuned, tuning = tune(source, classifier, head_model, paths, labels, fit, val, backbone_epochs, seed,
                         tflite_out=tflite_out)
    _save(folder, tuned, head_model, history, tuning)
    return Trained(head_model, tuned, history, tuning, reused=False)


def _save(folder: Path, tuned: Encoder, head_model: Any, history: dict, tuning: dict) -> None:
    """Write one entry through a staging folder renamed into place, so a reader never sees half of one."""
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    np.savez(staging / HEAD_WEIGHTS, *head_model.get_weights())
    if tuned.tflite_path is not None:
        shutil.copyfile(tuned.tflite_path, staging / BACKBONE_TFLITE)
        check = storage.sha256_file(staging / BACKBONE_TFLITE)
    else:
        np.savez(staging / BACKBONE_WEIGHTS, *tuned.keras_model.get_weights())
        check = weights_digest(tuned.keras_model)
    storage.write_json(staging / META, {"fingerprint": tuned.fingerprint, "check": check, "history": history,
                                        "tuning": tuning})
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _load(folder: Path, source: Encoder, feature_dim: int, n_classes: int, dim: int,
          tflite_out: Path | None) -> Trained | None:
    """Rebuild an entry, or None when there is none or it does not check out (then it is trained again)."""
    if not (folder / META).is_file():
        return None
    meta = storage.read_json(folder / META)
    _, head_model = build_head(feature_dim, dim, n_classes)
    with np.load(folder / HEAD_WEIGHTS) as saved:
        head_model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    if (folder / BACKBONE_TFLITE).is_file():
        if tflite_out is None or storage.sha256_file(folder / BACKBONE_TFLITE) != meta["check"]:
            log.warning("%s does not match its record; training again", folder)
            return None
        Path(tflite_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / BACKBONE_TFLITE, tflite_out)
        backbone = Encoder(source.name, meta["fingerprint"], source.feature_dim, tflite_path=Path(tflite_out),
                           _fn=tflite_runner(tflite_out))
    else:
        with np.load(folder / BACKBONE_WEIGHTS) as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        model = trainable(source).keras_model
        model.trainable = False  # as tune_backbone leaves it: the weights' order follows the trainable flags
        frozen = model.get_weights()
        if [w.shape for w in frozen] != [w.shape for w in weights]:
            log.warning("%s holds weights of another shape than %s's; training again", folder, source.name)
            return None
        model.set_weights(weights)
        if weights_digest(model) != meta["check"]:  # a damaged file: the frozen backbone is what training starts from
            model.set_weights(frozen)
            log.warning("%s does not match its record; training again", folder)
            return None
        backbone = keras_encoder(source.name, meta["fingerprint"], model)
    return Trained(head_model, backbone, meta["history"], meta["tuning"], reused=True)
