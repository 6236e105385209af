"""Measure quality levers side by side on validation queries: heads, losses, flips, encoder concatenation.

    python -m benchmarks.quality_levers --dataset fashion   # fashion-small, 10% of products held out (articleType)
    python -m benchmarks.quality_levers --dataset grocery   # grocery: val.txt shelf photos vs the grocery: catalog

Backbone features of the catalog and of the queries (and of their mirror images, and pooled over multi-crop
views) are computed once; each lever then trains a head on them in memory exactly as finetune does (same split,
early stopping on held-out catalog rows), `--seeds` times (the mean is printed with its spread), embeds catalog
and queries, and scores products as the service does (`runtime.products`, scoring `mix`). Variants: `head+qe`
expands each query with its 3 nearest catalog images; `head+centres` re-ranks with the classifier's class
centres; `head+crop-train` adds random crops' features as training rows; `multicrop` pools six views per image as
`finetune --multicrop 0.5` does; `mediapipe+tuned-mobilenet` trains a head on MediaPipe's features concatenated
with the embedding of MobileNet trained with its own head (`mobilenet-backbone`). Fashion prints precision@5 of
articleType; grocery prints product precision@1 (the first product is the one on the photo). Seconds of head
training and query-time cost are printed beside each.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED
from pipeline import acquire
from pipeline.catalog.grocery import queries_manifest
from pipeline.catalog.table import holdout_rows, read_catalog
from pipeline.encoders.backbones import load_encoder, with_multicrop
from pipeline.training import head
from runtime import tfenv
from runtime.items import flatten
from runtime.layout import Layout
from runtime.preprocess import decode_image
from runtime.products import ProductSearch

MODELS = SHARED / "models"
QE_IMAGES = 3
ENCODERS = {"mediapipe": ("mediapipe-embedder", MODELS / "mobilenet_v3_small_075_224_embedder.tflite"),
            "mobilenet": ("mobilenet-v1-0.25", MODELS / "mobilenet_2_5_224_tf_no_top.h5")}
LEVERS = ("raw", "head", "head+qe", "head+flip-tta", "head+flip-train", "head+flip-both", "head+crop-train",
          "head+centres", "cosface", "proxy-anchor", "concat", "concat+flip-both", "multicrop", "multicrop+centres",
          "mobilenet-head", "mobilenet-backbone", "mediapipe+tuned-mobilenet")
MULTICROP = 0.5  # finetune --multicrop: the whole image and five crops of half its side (runtime.views)
CROP_VIEWS = 4  # head+crop-train: random crops per catalog image, as extra training rows
CENTRE_WEIGHT = 0.5  # head+centres: a product's score + this x the query's cosine to its label's class centre
BACKBONE_EPOCHS = 8
BACKBONE_LR = 3e-4


def features(encoder: str, paths: list[str], flip: bool, batch: int = 64, multicrop: float = 0.0) -> np.ndarray:
    """Backbone features of images (mirrored when `flip`, pooled over multi-crop views when `multicrop`),
    L2-normalised."""
    name, weights = ENCODERS[encoder]
    backbone = with_multicrop(load_encoder(name, str(weights)), multicrop)
    out = []
    for i in range(0, len(paths), batch):
        x = np.stack([decode_image(p, backbone.input_size).numpy() for p in paths[i:i + batch]])
        out.append(backbone(x[:, :, ::-1] if flip else x))
    f = np.concatenate(out)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def crop_features(paths: list[str], views: int = CROP_VIEWS, seed: int = 0) -> np.ndarray:
    """MediaPipe features [views, N, F] of random crops (35-100% of the area, aspect 3:4-4:3, random flip and
    contrast), L2-normalised: the frozen backbone's analogue of training on augmented images."""
    tf = tfenv.tensorflow()
    name, weights = ENCODERS["mediapipe"]
    backbone = load_encoder(name, str(weights))
    rng = np.random.default_rng(seed)
    images = [decode_image(p).numpy() for p in paths]

    def crop(image: np.ndarray) -> np.ndarray:
        side = image.shape[0]
        area, aspect = rng.uniform(0.35, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        h = min(side, round(side * np.sqrt(area / aspect)))
        w = min(side, round(side * np.sqrt(area * aspect)))
        top, left = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        view = image[top:top + h, left:left + w][:, ::-1 if rng.random() < 0.5 else 1]
        view = tf.image.resize(view[None].astype(np.float32), [side, side], antialias=True)[0].numpy()
        return np.clip((view - view.mean()) * rng.uniform(0.75, 1.25) + view.mean() * rng.uniform(0.8, 1.2), 0, 255)

    out = np.stack([np.concatenate([backbone(np.stack([crop(im) for im in images[i:i + 64]]))
                                    for i in range(0, len(images), 64)]) for _ in range(views)])
    return out / np.linalg.norm(out, axis=2, keepdims=True)


def margin_loss(kind: str, n_classes: int) -> Any:
    """CosFace (additive cosine margin, scale 30, margin 0.2) or Proxy-Anchor (alpha 32, delta 0.1) over cosines."""
    tf = tfenv.tensorflow()

    def cosface(y, cos):
        onehot = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), n_classes)
        logits = 30.0 * (cos - 0.2 * onehot)
        return tf.nn.softmax_cross_entropy_with_logits(onehot, logits)

    def proxy_anchor(y, cos):
        onehot = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), n_classes)
        pos = tf.reduce_sum(onehot * tf.exp(-32.0 * (cos - 0.1)), axis=0)
        neg = tf.reduce_sum((1 - onehot) * tf.exp(32.0 * (cos + 0.1)), axis=0)
        with_pos = tf.reduce_sum(tf.cast(tf.reduce_sum(onehot, axis=0) > 0, tf.float32))
        loss = tf.reduce_sum(tf.math.log1p(pos)) / tf.maximum(with_pos, 1.0) + \
            tf.reduce_mean(tf.math.log1p(neg))
        return tf.fill(tf.shape(cos)[:1], loss)

    return cosface if kind == "cosface" else proxy_anchor


def train(x: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, loss: str = "softmax",
          extra: tuple[np.ndarray, np.ndarray] | None = None, dim: int = 256, seed: int = 0) -> Any:
    """Train finetune's head (or its variant with another loss) on rows `fit`, stopping on rows `val`; the
    returned embedding model carries the unit class centres [dim, classes] as `centres`."""
    keras = tfenv.keras()
    keras.utils.set_random_seed(seed)
    n_classes = int(y.max()) + 1
    train_model, embed = head.build_head(x.shape[1], dim, n_classes)
    if loss != "softmax":
        cosines = train_model.get_layer("class_centres").output
        train_model = keras.Model(train_model.input, cosines)
        train_model.compile(optimizer=keras.optimizers.Adam(head.LEARNING_RATE), loss=margin_loss(loss, n_classes))
    fx, fy = x[fit], y[fit]
    if extra is not None:
        fx, fy = np.concatenate([fx, extra[0]]), np.concatenate([fy, extra[1]])
    stop = head._retrieval_stopping(embed, x[fit], y[fit], x[val], y[val])  # noqa: SLF001 - finetune's own rule
    train_model.fit(fx, fy, batch_size=128, epochs=100, callbacks=[stop], verbose=0, shuffle=True)
    centres = train_model.get_layer("class_centres").get_weights()[0]
    embed.centres = centres / np.linalg.norm(centres, axis=0, keepdims=True)
    return embed


def embed(model: Any, x: np.ndarray, x_flip: np.ndarray | None = None) -> np.ndarray:
    """Embeddings of features (averaged with the mirror image's when given), unit length."""
    e = head._embed(model, x)  # noqa: SLF001
    if x_flip is not None:
        e = e + head._embed(model, x_flip)  # noqa: SLF001
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def pixels(paths: list[str]) -> np.ndarray:
    """Decoded 224x224 uint8 images."""
    return np.stack([decode_image(p).numpy().astype(np.uint8) for p in paths])


def train_backbone(images: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, dim: int = 256) -> Any:
    """Fine-tune MobileNet v1 0.25 itself with finetune's head on top, on augmented images (random crop-zoom, flip,
    contrast); keep the epoch whose held-out rows retrieve the training rows best (precision@5). Returns a model
    from 0..255 images to unit embeddings."""
    keras = tfenv.keras()
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(224, 224, 3),
                                            weights=str(ENCODERS["mobilenet"][1]), pooling="avg")
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomZoom((-0.2, 0.0))(x)
    x = keras.layers.RandomContrast(0.2)(x)
    x = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(x))
    x = keras.layers.Dense(dim)(keras.layers.Dropout(head.DROPOUT)(x))
    embedding = keras.layers.Lambda(head.l2_normalize)(x)
    centres = keras.layers.Dense(int(y.max()) + 1, use_bias=False, kernel_constraint=keras.constraints.UnitNorm(axis=0))
    logits = keras.layers.Lambda(lambda z: z * head.SCALE)(centres(embedding))
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.Adam(BACKBONE_LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    embed_model = keras.Model(inputs, embedding)
    best, best_weights = -1.0, None
    for epoch in range(BACKBONE_EPOCHS):
        model.fit(images[fit], y[fit], batch_size=32, epochs=1, verbose=0, shuffle=True)
        score = head.retrieval_precision(embed_model.predict(images[val], batch_size=64, verbose=0), y[val],
                                         embed_model.predict(images[fit], batch_size=64, verbose=0), y[fit])
        print(f"  backbone epoch {epoch + 1}: held-out precision@5 {score:.4f}", flush=True)
        if score > best:
            best, best_weights = score, model.get_weights()
    model.set_weights(best_weights)
    return embed_model


def tuned_mobilenet(work: Path, paths: list[str], qpaths: list[str], y: np.ndarray, fit: np.ndarray,
                    val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (catalog, queries) of MobileNet v1 0.25 trained with its head (`train_backbone`), computed once
    per work dir (two levers use them)."""
    cached = work / "mobilenet-tuned.npz"
    if not cached.is_file():
        images = pixels(paths)
        model = train_backbone(images, y, fit, val)
        np.savez(cached, base=model.predict(images, batch_size=64, verbose=0),
                 queries=model.predict(pixels(qpaths), batch_size=64, verbose=0))
    with np.load(cached) as f:
        return f["base"], f["queries"]


def expand(queries: np.ndarray, base: np.ndarray, n: int = QE_IMAGES) -> np.ndarray:
    """Query expansion: each query plus its n nearest catalog images, weighted by similarity, renormalised."""
    sims = queries @ base.T
    top = np.argpartition(-sims, n, axis=1)[:, :n]
    weights = np.take_along_axis(sims, top, axis=1)
    expanded = queries + (base[top] * weights[..., None]).sum(axis=1)
    return expanded / np.linalg.norm(expanded, axis=1, keepdims=True)


def score(dataset: str, base: np.ndarray, queries: np.ndarray, catalog: Any, qcat: Any,
          centres: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """(quality, ms per query): fashion p@5 of articleType, grocery product p@1; products scored by `mix`.

    With `centres` (unit class centres [dim, C], each image's class [N]), every product's score also gets
    CENTRE_WEIGHT x the query's cosine to its class's centre (the head's classifier re-ranking the results).
    """
    _, codes = np.unique(catalog["product_id"].to_numpy(), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    lists = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    search = ProductSearch(base.astype(np.float32), *flatten(lists), scoring="mix")
    label = "articleType" if dataset == "fashion" else "name"
    product_label = np.array([catalog[label].iloc[int(rows[0])] for rows in lists])
    k = 5 if dataset == "fashion" else 1
    started = time.perf_counter()
    if centres is None:
        hits = [[product_label[h.product] == want for h in search.search(q.astype(np.float32), k)]
                for q, want in zip(queries, qcat[label], strict=True)]
    else:  # re-rank a wide candidate list exactly: product score + weight x cosine to its class centre
        product_class = np.array([centres[1][int(rows[0])] for rows in lists])
        hits = []
        for q, want in zip(queries, qcat[label], strict=True):
            found = search.search(q.astype(np.float32), 50)
            boost = (q @ centres[0])[product_class[[h.product for h in found]]]
            ranked = np.argsort(-(np.array([h.score for h in found]) + CENTRE_WEIGHT * boost), kind="stable")[:k]
            hits.append([product_label[found[i].product] == want for i in ranked])
    ms = 1000 * (time.perf_counter() - started) / len(queries)
    return float(np.mean([sum(h) / k for h in hits])), ms


def main(argv: list[str] | None = None) -> None:
    """Prepare the dataset, compute features, run every lever and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion", "grocery"), required=True)
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS))
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=3,
                        help="head trainings per lever (seeds 0..N-1; same split): the mean and its spread")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        layout = Layout(work / "data")
        if args.dataset == "fashion":
            if not layout.catalog_csv.is_file():
                acquire.run(f"fashion:{SHARED / 'data' / 'fashion-small'}", layout.root, holdout=0.1,
                            holdout_column="category")
            catalog, qcat = read_catalog(layout.catalog_csv), read_catalog(layout.queries_csv)
            qpaths = [str(layout.catalog / p) for p in qcat["image"]]
            label = "category"
        else:
            if not layout.catalog_csv.is_file():
                acquire.run(f"grocery:{SHARED / 'data' / 'grocery'}", layout.root)
                queries_manifest(SHARED / "data" / "grocery", work / "val.csv")
            catalog, qcat = read_catalog(layout.catalog_csv), read_catalog(work / "val.csv")
            qpaths = qcat["image"].tolist()
            label = "name"
        paths = [str(layout.catalog / p) for p in catalog["image"]]
        feats = {}
        for encoder, flip, multicrop in (("mediapipe", False, 0.0), ("mediapipe", True, 0.0), ("mobilenet", False, 0.0),
                                         ("mobilenet", True, 0.0), ("mediapipe", False, MULTICROP)):
            cached = work / f"{encoder}-{int(flip)}{f'-multicrop{multicrop:g}' if multicrop else ''}.npz"
            if not cached.is_file():
                np.savez(cached, base=features(encoder, paths, flip, multicrop=multicrop),
                         queries=features(encoder, qpaths, flip, multicrop=multicrop))
            with np.load(cached) as f:
                feats[encoder, flip, multicrop] = (f["base"], f["queries"])
        _, y = np.unique(catalog[label].to_numpy(), return_inverse=True)
        fit, val = holdout_rows(y, 0.1, 0)
        mp, mp_flip = feats["mediapipe", False, 0.0], feats["mediapipe", True, 0.0]
        cat = tuple(np.concatenate([a, b], axis=1) for a, b in zip(mp, feats["mobilenet", False, 0.0], strict=True))
        cat_flip = tuple(np.concatenate([a, b], axis=1) for a, b in zip(mp_flip, feats["mobilenet", True, 0.0],
                                                                         strict=True))
        rows = []
        for lever in args.levers:
            started = time.perf_counter()
            x, xf = (cat, cat_flip) if lever.startswith("concat") else (mp, mp_flip)
            if lever == "mobilenet-head":
                x = feats["mobilenet", False, 0.0]
            if lever.startswith("multicrop"):
                x = feats["mediapipe", False, MULTICROP]
            qualities, ms = [], 0.0
            crops = crop_features(paths)[:, fit] if lever == "head+crop-train" else None
            # one figure for levers without a trained head (raw) or too slow to repeat (backbone training)
            if lever == "mediapipe+tuned-mobilenet":  # a head on MediaPipe's features + the tuned MobileNet's embedding
                tuned = tuned_mobilenet(work, paths, qpaths, y, fit, val)
                x = tuple(np.concatenate([a, b], axis=1) for a, b in zip(mp, tuned, strict=True))
            for seed in range(1 if lever in ("raw", "mobilenet-backbone") else args.seeds):
                centres = None
                if lever == "raw":
                    base, queries = x
                elif lever == "mobilenet-backbone":
                    base, queries = tuned_mobilenet(work, paths, qpaths, y, fit, val)
                else:
                    loss = lever if lever in ("cosface", "proxy-anchor") else "softmax"
                    extra = (xf[0][fit], y[fit]) if lever.endswith(("flip-train", "flip-both")) else None
                    if crops is not None:
                        extra = (crops.reshape(-1, crops.shape[-1]), np.tile(y[fit], len(crops)))
                    model = train(x[0], y, fit, val, loss, extra, seed=seed)
                    if lever.endswith("centres"):
                        centres = (model.centres, y)
                    tta = lever.endswith(("flip-tta", "flip-both"))
                    base = embed(model, x[0], xf[0] if tta else None)
                    queries = embed(model, x[1], xf[1] if tta else None)
                    if lever.endswith("qe"):
                        queries = expand(queries, base)
                quality, ms = score(args.dataset, base, queries, catalog, qcat, centres)
                qualities.append(quality)
            seconds = (time.perf_counter() - started) / len(qualities)
            rows.append((lever, float(np.mean(qualities)), float(np.std(qualities)), seconds, ms))
            print(f"{lever:20s} {np.mean(qualities):.4f} (sd {np.std(qualities):.4f}, {len(qualities)} seeds: "
                  f"{' '.join(f'{v:.3f}' for v in qualities)})  head {seconds:6.1f} s  search {ms:.2f} ms/query",
                  flush=True)
    measure = "precision@5 (articleType)" if args.dataset == "fashion" else "product precision@1"
    print(f"\nquality_levers: {args.dataset}, {len(catalog)} catalog images, {len(qcat)} queries, MediaPipe "
          f"embedder (concat: + MobileNet v1 0.25), scoring mix; {measure}")
    for lever, quality, sd, seconds, ms in rows:
        print(f"| {lever} | {quality:.3f} ± {sd:.3f} | {seconds / 60:.1f} min | {ms:.2f} ms |")


if __name__ == "__main__":
    main()
