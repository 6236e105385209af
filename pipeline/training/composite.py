"""Two or more backbones as one encoder (`--encoder a+b`): their features, each L2-normalised, side by side.

The head then trains on the concatenation, so it learns what each backbone adds. A trainable part whose
`--backbone-epochs` is not 0 (a TF-graph backbone, or the MediaPipe embedder's file rebuilt as one; only MobileNet by
default) is first trained with a head of its own, as finetune trains a single backbone, and contributes that
head's embedding (a trained MediaPipe part as one TFLite file, backbone and head); a frozen part contributes its
raw features. On fashion-small the MediaPipe embedder plus MobileNet v1 0.25 trained this way
beats either alone (docs/quality.md, "Quality levers").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.common.errors import StageError
from pipeline.encoders.backbones import SERVED_AS_TFLITE, Encoder, as_tflite, can_train, keras_encoder, load_encoder
from pipeline.features.cache import FeatureCache
from pipeline.features.compute import fill_cache
from pipeline.training import tuned_cache
from pipeline.training.backbone_tuning import weights_digest
from runtime import tfenv
from runtime.extractor import side_by_side, tflite_runner
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)

SEPARATOR = "+"


def is_composite(name: str) -> bool:
    """Whether an `--encoder` value names several backbones (`a+b`) rather than one."""
    return SEPARATOR in name and not Path(name).exists()


def load_parts(name: str, weights: str | None) -> list[Encoder]:
    """Load each backbone of `a+b[+...]`, with `--encoder-weights wa+wb` (an empty entry: none for that part).

    Raises:
        StageError: a different number of weights than of backbones, or a part that cannot be loaded.
    """
    names = name.split(SEPARATOR)
    files = weights.split(SEPARATOR) if weights else [""] * len(names)
    if len(files) != len(names) or not all(names):
        raise StageError(f"--encoder {name!r} names {len(names)} backbone(s) but --encoder-weights {weights!r} gives "
                         f"{len(files)}; give one per backbone, joined by '+' (an empty one for a backbone that "
                         "takes none), e.g. mediapipe-embedder+mobilenet-v1-0.25 with a.tflite+b.h5")
    return [load_encoder(n, f or None) for n, f in zip(names, files, strict=True)]


def concatenated(parts: Sequence[Encoder]) -> Encoder:
    """Return the encoder whose features are the parts' L2-normalised features concatenated."""
    parts = tuple(parts)
    return Encoder(SEPARATOR.join(p.name for p in parts), SEPARATOR.join(p.fingerprint for p in parts),
                   sum(p.feature_dim for p in parts), parts=parts,
                   _fn=lambda images: side_by_side([part(images) for part in parts]))


def tune_part(part: Encoder, cache_dir: Path, keys: list[str], paths: list[str], labels: np.ndarray, fit: np.ndarray,
              val: np.ndarray, dim: int, epochs: int, backbone_epochs: int, seed: int, store: Path,
              model_dir: Path | None = None, reuse: bool = True) -> tuple[Encoder, dict]:
    """Train a trainable part as finetune trains one backbone (a head on its cached features, then backbone and head
    together), or load that training from `store` (`tuned_cache`: the same as the single backbone's, so
    `--encoder a` then `a+b` trains `a` once), and return the encoder from images to that head's embedding, with
    the part's history.

    Args:
        part: a backbone with a Keras model, or the MediaPipe embedder's file (`encoders.trainable`).
        cache_dir: the part's own feature cache folder (its fingerprint's).
        keys, paths: the catalog's readable images; labels, fit, val: the split the composite's head uses.
        dim: embedding length of the part's head; epochs: most head epochs; backbone_epochs: end-to-end epochs.
        seed: seeds the head, the shuffling and the augmentation.
        store: trained backbones kept between runs (`cache/tuned`).
        model_dir: where a TFLite part's trained files are written (required for one).
        reuse: False trains even what `store` holds.

    Raises:
        ValueError: a TFLite part without `model_dir`.
    """
    if part.tflite_path is not None and model_dir is None:
        raise ValueError(f"part {part.name!r} is a TFLite file: its trained files need a model_dir")
    cache = FeatureCache(cache_dir)
    _, failed = fill_cache(cache, keys, paths, part, desc=f"backbone {part.name}")
    if failed:  # train this part on the images it can read (finetune leaves the others out of the catalog too)
        readable = np.array([k not in failed for k in keys], bool)
        renumber = np.cumsum(readable) - 1
        keys = [k for k, ok in zip(keys, readable, strict=True) if ok]
        paths = [p for p, ok in zip(paths, readable, strict=True) if ok]
        labels, fit, val = labels[readable], renumber[fit[readable[fit]]], renumber[val[readable[val]]]
    tflite_out = Path(model_dir) / f"{part.fingerprint}-tuned.tflite" if part.tflite_path is not None else None
    trained = tuned_cache.head_and_backbone(part, cache, part.fingerprint, keys, paths, labels, fit, val, dim, epochs,
                                            backbone_epochs, seed, store, tflite_out, reuse)
    tuned, head, history, tuning = trained.backbone, trained.head, trained.history, trained.tuning
    fingerprint = f"{tuned.fingerprint}-embedding-{weights_digest(head)}"
    monitored = tuning["val_precision_at_5"]
    log.info("%s trained with its own head: held-out precision@5 %s", part.name, max(monitored) if monitored else "-")
    if tuned.tflite_path is not None:
        from pipeline.encoders import mediapipe_keras

        written = mediapipe_keras.embedding_tflite(tuned.tflite_path, head, Path(model_dir) / f"{fingerprint}.tflite")
        run = tflite_runner(written)
        embedding = Encoder(part.name, fingerprint, int(run(np.zeros([1, INPUT_SIZE, INPUT_SIZE, 3])).shape[-1]),
                            tflite_path=written, _fn=run)
    else:
        keras = tfenv.keras()
        images = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
        model = keras.Model(images, head(tuned.keras_model(images), training=False), name="part_embedding")
        embedding = keras_encoder(part.name, fingerprint, model)
    return embedding, {
        "encoder": part.name, "head_epochs": len(history["loss"]), "backbone_epochs": backbone_epochs,
        "backbone_val_precision_at_5": max(monitored) if monitored else None, "reused": trained.reused}


def build(name: str, weights: str | None, features_dir: Callable[[str], Path], keys: list[str], paths: list[str],
          labels: np.ndarray, fit: np.ndarray, val: np.ndarray, dim: int, epochs: int, backbone_epochs: int | None,
          default_epochs: dict[str, int], store: Path, seed: int = 0, model_dir: Path | None = None,
          reuse: bool = True) -> tuple[Encoder, list[dict]]:
    """Load the backbones of `a+b`, train each trainable one with a head of its own, and concatenate them.

    Args:
        name, weights: the `--encoder` and `--encoder-weights` values (`+`-joined).
        features_dir: the feature cache folder of a fingerprint.
        keys, paths, labels, fit, val: the catalog's images, classes and the split finetune uses.
        dim, epochs: a part's head: embedding length and most epochs.
        backbone_epochs: end-to-end epochs for every trainable part; None: each part's default (`default_epochs`).
        default_epochs: each part's default backbone epochs (finetune's `COMPOSITE_PART_EPOCHS`).
        store: trained backbones kept between runs (`cache/tuned`, `pipeline.training.tuned_cache`).
        seed: seeds every part's training.
        model_dir: where trained TFLite parts are written (`tune_part`).
        reuse: False trains every trainable part even when `store` holds its training.

    Returns:
        The concatenated encoder, and what was done to each part.
    """
    parts, facts = [], []
    for part in load_parts(name, weights):
        n = default_epochs.get(part.name, 0) if backbone_epochs is None else backbone_epochs
        if n and can_train(part):
            part, done = tune_part(part, features_dir(part.fingerprint), keys, paths, labels, fit, val, dim, epochs,
                                   n, seed, store, model_dir, reuse)
        else:
            done = {"encoder": part.name, "backbone_epochs": 0}
        if part.name in SERVED_AS_TFLITE and part.keras_model is not None and model_dir is not None:
            part = as_tflite(part, Path(model_dir) / f"{part.fingerprint}.tflite")  # the same vectors, faster
        parts.append(part)
        facts.append(done)
    return concatenated(parts), facts
