"""Whether finetune trains again or keeps its model: the same images and labels train nothing; a changed catalog
retrains by `--retrain auto|always|never`, auto by a rule measured on fashion-small (`benchmarks.retrain_rule`).

A kept model keeps its export id, so vectorize embeds only the new images and the index changes only where the
catalog did. What a model was trained on is recorded beside it: `finetune.json`'s `training` (a digest of the
options and one of the catalog's images and labels) and `model/trained_images.npy` (the first 8 bytes of each
training image's sha256, sorted), against which a later catalog's new images and classes are counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.errors import StageError
from runtime import storage
from runtime.layout import EXTRACTOR_CONFIG, LABELS, TRAINED_IMAGES, Layout

log = logging.getLogger(__name__)

RETRAIN = ("auto", "always", "never")
# auto retrains when at least this share of the catalog's images is new to the model, or any class is: on
# fashion-small the old head lost nothing measurable with 5% of products added, a little with 20%, and much for
# new article types (docs/refresh.md, "When finetune trains again")
NEW_IMAGES_SHARE = 0.1


@dataclass(frozen=True)
class Decision:
    """Train or keep, why, and what the catalog holds that the model never saw."""

    train: bool
    reason: str
    new_images: int = 0
    new_classes: int = 0


def options_digest(options: dict) -> str:
    """A digest of finetune's options, the weights file's content included (a replaced file is other weights)."""
    weights = options.get("encoder_weights")
    files = [w for w in (weights or "").split("+") if w]
    contents = [storage.sha256_file(Path(w)) if Path(w).is_file() else w for w in files]
    return hashlib.sha256(json.dumps({**options, "weights_content": contents}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def catalog_digest(keys: list[str], labels: list[str]) -> str:
    """A digest of the catalog's images (sha256s) and labels, in order: what the head's training sees."""
    digest = hashlib.sha256()
    for key, label in zip(keys, labels, strict=True):
        digest.update(f"{key}\t{label}\n".encode())
    return digest.hexdigest()


def image_prefixes(keys: list[str]) -> np.ndarray:
    """The first 8 bytes of each sha256 as sorted uint64: a compact set of images (8 bytes each)."""
    return np.unique(np.array([int(k[:16], 16) for k in keys], np.uint64))


def decide(layout: Layout, retrain: str, options: str, catalog: str, keys: list[str], labels: list[str]) -> Decision:
    """Decide whether finetune trains.

    Args:
        layout: the data directory.
        retrain: auto, always or never.
        options, catalog: `options_digest` and `catalog_digest` of this run.
        keys, labels: the catalog's image sha256s and label values.

    Raises:
        StageError: an unknown `retrain`, or `never` with options other than the model's.
    """
    if retrain not in RETRAIN:
        raise StageError(f"--retrain must be one of {RETRAIN}, got {retrain!r}")
    try:
        trained = storage.read_json(layout.finetune_summary).get("training") or {}
        has_model = (layout.extractor / EXTRACTOR_CONFIG).is_file() and (layout.model / TRAINED_IMAGES).is_file()
    except (OSError, ValueError):
        trained, has_model = {}, False
    if not has_model or not trained:
        if retrain == "never":
            raise StageError(f"--retrain never: no model trained by this version in {layout.model}; run finetune "
                             "once with --retrain auto or always")
        return Decision(True, "no model yet")
    if trained.get("options") != options:
        if retrain == "never":
            raise StageError("--retrain never: the model in model/ was trained with other options (encoder, weights, "
                             "label column, dim, ...); use them again, or --retrain auto")
        return Decision(True, "the options differ from the model's")
    if trained.get("catalog") == catalog:
        return Decision(False, "the same images and labels as the model was trained on")
    seen = np.load(layout.model / TRAINED_IMAGES)
    new_images = int(np.sum(~np.isin(np.array([int(k[:16], 16) for k in keys], np.uint64), seen)))
    known_classes = set(storage.read_json(layout.model / LABELS).get("classes", [])) \
        if (layout.model / LABELS).is_file() else set(labels)
    new_classes = len(set(labels) - known_classes)
    share = new_images / max(1, len(keys))
    if retrain == "always":
        return Decision(True, "--retrain always", new_images, new_classes)
    if retrain == "never":
        return Decision(False, "--retrain never", new_images, new_classes)
    if share >= NEW_IMAGES_SHARE or new_classes:
        return Decision(True, f"{share:.1%} of the images and {new_classes} class(es) are new to the model (auto "
                              f"retrains from {NEW_IMAGES_SHARE:.0%} or any new class)", new_images, new_classes)
    return Decision(False, f"{share:.1%} of the images are new to the model and no class is (auto keeps it below "
                           f"{NEW_IMAGES_SHARE:.0%})", new_images, new_classes)


def record(layout: Layout, summary: dict, options: str, catalog: str, keys: list[str]) -> None:
    """Record what a freshly trained model was trained on (in `summary`, written as finetune.json, and beside it)."""
    np.save(layout.model / TRAINED_IMAGES, image_prefixes(keys))
    summary["training"] = {"options": options, "catalog": catalog, "images": len(keys)}
