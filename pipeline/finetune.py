"""Stage 2, finetune: frozen backbone features (computed once, cached) and a trained feature-vector head."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.sources import default_label, default_multicrop
from pipeline.catalog.table import catalog_inputs, holdout_rows
from pipeline.common import cli, plots
from pipeline.common.errors import StageError
from pipeline.encoders import autoencoder
from pipeline.encoders.backbones import DEFAULT_ENCODER, can_train, load_encoder, with_multicrop
from pipeline.features.cache import FeatureCache
from pipeline.features.compute import fill_cache
from pipeline.training import composite, retrain_rule, tuned_cache
from pipeline.training.export import export, served_form
from pipeline.training.head import build_head, train_head
from runtime import storage
from runtime.layout import (
    AUTOENCODER_CURVES,
    AUTOENCODER_WEIGHTS,
    HISTORY,
    LABELS,
    TRAINING_CURVES,
    TUNED_PARTS_DIR,
    TUNED_TFLITE,
    VIEWS_DIR,
    Layout,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_DIM = 256
# Epochs of training the backbone itself after the head, per encoder where that won on both catalogs measured
# (docs/quality.md: MobileNet v1 0.25, and the MediaPipe embedder rebuilt as a Keras graph), or on fashion by more
# than it moved grocery (EfficientNet-Lite2, its top blocks).
BACKBONE_EPOCHS = {"mobilenet-v1-0.25": 8, "mediapipe-embedder": 4, "efficientnet-lite2": 4}
# A composite's parts: a trained MediaPipe part lost beside the trained MobileNet on both catalogs
# (docs/quality.md, "Pick an encoder"), so it stays frozen unless --backbone-epochs says.
COMPOSITE_PART_EPOCHS = {"mobilenet-v1-0.25": 8}
# Backbones that keep multi-crop views when trained: MediaPipe with views, trained, is the best single-backbone
# grocery figure measured (docs/quality.md); trained without views it is not measured. A trained Lite2 lost 0.06
# of grocery's precision@1 without them.
VIEWS_EVEN_TRAINED = ("mediapipe-embedder", "efficientnet-lite2")


def run(data_dir: Path, encoder: str = DEFAULT_ENCODER, encoder_weights: str | None = None,
        label_column: str | None = None, dim: int = DEFAULT_DIM, no_finetune: bool = False, val_split: float = 0.1,
        epochs: int = 100, ae_epochs: int = 15, seed: int = 0, backbone_epochs: int | None = None,
        multicrop: float | None = None, retrain: str = "auto") -> dict:
    """Compute (or reuse) backbone features for the catalog, train the head on them, export the extractor; or keep
    the model when the catalog gives no reason to train it again (`pipeline.training.retrain_rule`).

    Args:
        data_dir: the data directory; reads `catalog/`, writes `model/` and `cache/features/`.
        encoder: backbone name (see `pipeline.encoders.backbones.load_encoder`), or several joined by `+`
            (`pipeline.training.composite`: their features side by side; a trainable one is first trained with its
            own head).
        encoder_weights: the backbone's weights file where it takes one (for `a+b`: one per backbone, `+`-joined).
        label_column: catalog column the classification layer learns (default: the source's, see
            `pipeline.catalog.sources.default_label`: `name` for grocery, else `category`).
        dim: length of the feature-vector layer (the embedding).
        no_finetune: keep the raw backbone features (only L2-normalised) instead of training a head.
        val_split: fraction of products held out for early stopping.
        epochs: most epochs of head training.
        ae_epochs: most epochs of auto-encoder training (encoder `autoencoder` without weights).
        seed: random seed of the split and the training.
        backbone_epochs: epochs of training the backbone itself with the head, on augmented images, after the
            head (`pipeline.training.backbone_tuning`); None: the encoder's default (`BACKBONE_EPOCHS`: 8 for
            mobilenet-v1-0.25, 4 for mediapipe-embedder, else 0). A TFLite backbone other than the MediaPipe
            embedder cannot be trained. A backbone already trained on the same images, labels, split and options (by
            itself or as a composite's part) is loaded from `cache/tuned` instead
            (`pipeline.training.tuned_cache`).
        multicrop: pool the backbone's features over the whole image and five crops of this share of the side
            (`runtime.views`; six backbone passes per image, in vectorize and per query too, one call for the
            MediaPipe embedder); 0 turns it off; None: the source's default
            (`pipeline.catalog.sources.default_multicrop`: 0.5 for grocery, else 0), except 0 for one backbone that
            finetune trains other than MediaPipe (a trained MobileNet gained nothing from it on grocery).
        retrain: with a model already trained with the same options: `auto` keeps it unless enough of the catalog
            is new to it (`pipeline.training.retrain_rule.decide`), `always` trains (even a backbone `cache/tuned`
            holds), `never` keeps it. The same images and labels never train again. A kept model keeps its export
            id: vectorize embeds only new images.

    Returns:
        The summary written to `model/finetune.json` (`reused` and `decision` say whether it trained, and why).

    Raises:
        StageError: no catalog, an unknown label column, fewer than two classes, an encoder that cannot be loaded,
            a multi-crop fraction outside [0, 1), or `--retrain never` without a model trained with these options.
    """
    layout = Layout(Path(data_dir))
    catalog, keys, paths = catalog_inputs(layout)
    source = storage.read_json(layout.catalog_summary).get("source") if layout.catalog_summary.is_file() else None
    label_column = default_label(source) if label_column is None else label_column
    if multicrop is None:  # multi-crop views lost only on a single trained backbone (docs/quality.md, "Quality levers")
        multicrop = 0.0 if _one_trained_backbone(encoder, backbone_epochs) else default_multicrop(source)
    started = time.perf_counter()
    options = retrain_rule.options_digest({
        "encoder": encoder, "encoder_weights": encoder_weights, "label_column": label_column, "dim": dim,
        "no_finetune": no_finetune, "val_split": val_split, "epochs": epochs, "ae_epochs": ae_epochs, "seed": seed,
        "backbone_epochs": backbone_epochs, "multicrop": multicrop})
    labels = catalog[label_column].tolist() if label_column in catalog.columns else [""] * len(keys)
    trains_on_catalog = not no_finetune or encoder == "autoencoder"
    digest = retrain_rule.catalog_digest(keys, labels) if trains_on_catalog else "raw features"
    decision = retrain_rule.decide(layout, retrain, options, digest, keys, labels)
    log.info("finetune: %s (%s)", "training" if decision.train else "keeping the model", decision.reason)
    if not decision.train:
        summary = {**storage.read_json(layout.finetune_summary), "reused": True, "decision": decision.reason,
                   "new_images": decision.new_images, "new_classes": decision.new_classes,
                   "backbone_images_computed": 0, "products": len(keys),
                   "seconds": round(time.perf_counter() - started, 1)}
        storage.write_json(layout.finetune_summary, summary)
        return summary
    if encoder == "autoencoder" and encoder_weights is None:
        encoder_weights = str(layout.model / AUTOENCODER_WEIGHTS)
        ae_history = autoencoder.train(paths, Path(encoder_weights), epochs=ae_epochs, seed=seed)
        plots.training_curves(ae_history, layout.model / AUTOENCODER_CURVES, "auto-encoder reconstruction")
    parts_info = None
    if composite.is_composite(encoder):  # its trainable parts are trained here, each with a head of its own
        _, labels, fit, val = _split(catalog, label_column, val_split, seed)
        single_view, parts_info = composite.build(encoder, encoder_weights, layout.features, keys, paths, labels, fit,
                                                  val, dim, epochs, 0 if no_finetune else backbone_epochs,
                                                  COMPOSITE_PART_EPOCHS, layout.tuned_cache, seed,
                                                  layout.model / TUNED_PARTS_DIR, reuse=retrain != "always")
        backbone_epochs = 0
    else:
        single_view = load_encoder(encoder, encoder_weights)
    backbone = with_multicrop(single_view, multicrop, layout.model / VIEWS_DIR)
    served = served_form(single_view, backbone, multicrop, layout.model)  # computes the features as vectorize will
    cache = FeatureCache(layout.features(backbone.fingerprint))
    computed, failed = fill_cache(cache, keys, paths, served)
    if failed:  # the catalog changed since acquire verified it; train on what can be read
        readable = ~np.isin(np.asarray(keys), list(failed))
        catalog = catalog[readable].reset_index(drop=True)
        keys = catalog["sha256"].tolist()
        paths = [str(layout.catalog / p) for p in catalog["image"]]
        log.warning("finetune: %d image(s) could not be read and were left out of training", len(failed))
    summary = {"encoder": encoder, "encoder_weights": encoder_weights, "encoder_fingerprint": backbone.fingerprint,
               "products": len(keys), "backbone_images_computed": computed, "unreadable_images": len(failed),
               "feature_dim": backbone.feature_dim, "multicrop": multicrop}
    if parts_info is not None:
        summary["parts"] = parts_info
    backbone_epochs = BACKBONE_EPOCHS.get(encoder, 0) if backbone_epochs is None else backbone_epochs
    if backbone_epochs and not no_finetune and not can_train(single_view):
        raise StageError(f"--backbone-epochs {backbone_epochs}: encoder {encoder!r} cannot be fine-tuned (a TFLite "
                         "file other than the MediaPipe embedder is inference-only); use --backbone-epochs 0")
    if no_finetune:
        _, head = build_head(backbone.feature_dim, None, 0)
        info = {"finetuned": False}
    else:
        classes, labels, fit, val = _split(catalog, label_column, val_split, seed)
        if backbone_epochs:  # the backbone is tuned on whole images; the tuned one then pools views as before
            trained = tuned_cache.head_and_backbone(single_view, cache, backbone.fingerprint, keys, paths, labels,
                                                    fit, val, dim, epochs, backbone_epochs, seed, layout.tuned_cache,
                                                    layout.model / TUNED_TFLITE, reuse=retrain != "always")
            head = trained.head
            info = _record_head(trained.history, classes, label_column, dim, len(fit), len(val), layout)
            backbone = with_multicrop(trained.backbone, multicrop, layout.model / VIEWS_DIR)
            served = served_form(trained.backbone, backbone, multicrop, layout.model)
            monitored = trained.tuning["val_precision_at_5"]
            info.update({"backbone_epochs": backbone_epochs, "backbone_history": trained.tuning,
                         "backbone_val_precision_at_5": max(monitored) if monitored else None,
                         "backbone_reused": trained.reused})
        else:
            _, head, history = train_head(cache, keys, labels, fit, val, dim, epochs=epochs, seed=seed)
            info = _record_head(history, classes, label_column, dim, len(fit), len(val), layout)
    summary.update(info, encoder_fingerprint=backbone.fingerprint, reused=False, decision=decision.reason,
                   new_images=decision.new_images, new_classes=decision.new_classes)
    export(served, head, layout.extractor, info)
    retrain_rule.record(layout, summary, options, digest, keys)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    storage.write_json(layout.finetune_summary, summary)
    return summary


def _record_head(history: dict, classes: np.ndarray, label_column: str, dim: int, train_rows: int, val_rows: int,
                 layout: Layout) -> dict:
    """Write the head's labels, history and curves; return what the summary says of its training."""
    storage.write_json(layout.model / HISTORY, history)
    storage.write_json(layout.model / LABELS, {"label_column": label_column, "classes": classes.tolist()})
    plots.training_curves(history, layout.model / TRAINING_CURVES,
                          f"head training: {len(classes)} classes of {label_column}, {dim}-d embedding")
    monitored = history.get("val_precision_at_5")
    best = int(np.argmax(monitored)) if monitored else -1
    return {"finetuned": True, "label_column": label_column, "classes": len(classes), "dim": dim,
            "train_rows": train_rows, "val_rows": val_rows, "epochs": len(history["loss"]),
            "best_epoch": best + 1 if monitored else len(history["loss"]),
            "val_accuracy": history.get("val_accuracy", [None])[best],
            "val_precision_at_5": monitored[best] if monitored else None}


def _one_trained_backbone(encoder: str, backbone_epochs: int | None) -> bool:
    """Whether the encoder is one backbone that finetune trains itself (a TF-graph one with epochs to run), whose
    multi-crop views are then off by default; a trained MediaPipe or Lite2 keeps them (`VIEWS_EVEN_TRAINED`).

    Multi-crop views gave such a backbone nothing on grocery (MobileNet: 0.601 -> 0.605), while a frozen one
    (MediaPipe: 0.696 -> 0.791) and a composite with a trained part (0.733 -> 0.841) gained.
    """
    if composite.is_composite(encoder) or encoder in VIEWS_EVEN_TRAINED:
        return False
    return (BACKBONE_EPOCHS.get(encoder, 0) if backbone_epochs is None else backbone_epochs) > 0


def _split(catalog: pd.DataFrame, label_column: str, val_split: float, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (classes, each row's class, training rows, held-out rows) for a label column.

    Raises:
        StageError: the column is not in the catalog, or has fewer than two values.
    """
    if label_column not in catalog.columns:
        raise StageError(f"--label-column {label_column!r} is not a catalog column; columns: {list(catalog.columns)}")
    classes, labels = np.unique(catalog[label_column].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise StageError(f"--label-column {label_column!r} has {len(classes)} distinct value(s); a classification "
                         "head needs at least two (or use --no-finetune)")
    fit, val = holdout_rows(labels, val_split, seed) if val_split else (np.arange(len(labels)), np.array([], int))
    return classes, labels, fit, val


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this stage's options to a parser: one flag per keyword of `run`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER,
                        help="bit-m-r50x3 (default) | bit-m-r50x1 | hub:HANDLE_OR_PATH | efficientnet-lite2 | "
                             "mobilenet-v1-0.25 | "
                             "mediapipe-embedder | autoencoder; several joined by + (a+b): their features side by side")
    parser.add_argument("--encoder-weights", default=None,
                        help="weights file (.h5, .tflite, .weights.h5); for a+b one per backbone, joined by +")
    parser.add_argument("--label-column", default=None,
                        help="catalog column to classify (default: name for a grocery: catalog, else category)")
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM, help=f"feature-vector length (default {DEFAULT_DIM})")
    parser.add_argument("--no-finetune", action="store_true", help="keep raw backbone features")
    parser.add_argument("--val-split", type=float, default=0.1, help="held out for early stopping (default 0.1)")
    parser.add_argument("--epochs", type=int, default=100, help="most head epochs (early stopping decides)")
    parser.add_argument("--ae-epochs", type=int, default=15, help="most auto-encoder epochs")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split and the training")
    parser.add_argument("--backbone-epochs", type=int, default=None,
                        help="epochs of training the backbone itself, on augmented images, after the head (default: "
                             f"{BACKBONE_EPOCHS} per encoder, else 0; a TFLite backbone other than MediaPipe's "
                             "cannot be trained)")
    parser.add_argument("--multicrop", type=float, default=None,
                        help="pool features over the whole image and 5 crops of this share of the side (6 backbone "
                             "passes per image; 0: off; default 0.5 for a grocery: catalog unless one backbone is "
                             "trained, else 0)")
    parser.add_argument("--retrain", choices=retrain_rule.RETRAIN, default="auto",
                        help="after the catalog changed: auto (default) retrains when enough of it is new to the "
                             "model, always (even a backbone kept in cache/tuned), or never; the same images and "
                             "labels never retrain")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run."""
    if summary.get("reused"):
        return (f"finetune: kept the model ({summary['decision']}); {summary['new_images']} image(s) new to it, "
                f"embedded by vectorize; extractor in {Layout(options['data_dir']).extractor}")
    if summary.get("val_precision_at_5") is not None:
        result = f"{summary['classes']} classes, held-out precision@5 {summary['val_precision_at_5']:.3f}"
    else:
        result = "trained without a validation split" if summary["finetuned"] else "raw features"
    return (f"finetune: {summary['encoder']} on {summary['products']} products, "
            f"{summary['backbone_images_computed']} backbone passes (the rest cached); {result}; "
            f"extractor in {Layout(options['data_dir']).extractor}")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line (`python -m pipeline.finetune --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
