"""Measure quality levers side by side on validation queries: heads, losses, flips, encoder concatenation.

    python -m benchmarks.quality_levers --dataset fashion   # fashion-small, 10% of products held out (articleType)
    python -m benchmarks.quality_levers --dataset grocery   # grocery: val.txt shelf photos vs the grocery: catalog

Backbone features of the catalog and of the queries (and of their mirror images) are computed once; each lever
then trains a head on them in memory (or, for `head+qe`, expands each query with its 3 nearest catalog
images), exactly as finetune does (same split, early stopping on held-out catalog
rows, seed 0), embeds catalog and queries, and scores products as the service does (`runtime.products`, scoring
`mix`). Fashion prints precision@5 of articleType; grocery prints product precision@1 (the first product is the
one on the photo). Minutes of head training and query-time cost are printed beside each.
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
from pipeline import acquire, head
from pipeline.catalog import holdout_rows, read_catalog
from pipeline.encoders import load_encoder
from pipeline.grocery import queries_manifest
from runtime import tfenv
from runtime.layout import Layout
from runtime.preprocess import decode_image
from runtime.products import ProductSearch, flatten

MODELS = SHARED / "models"
QE_IMAGES = 3
ENCODERS = {"mediapipe": ("mediapipe-embedder", MODELS / "mobilenet_v3_small_075_224_embedder.tflite"),
            "mobilenet": ("mobilenet-v1-0.25", MODELS / "mobilenet_2_5_224_tf_no_top.h5")}
LEVERS = ("raw", "head", "head+qe", "head+flip-tta", "head+flip-train", "head+flip-both", "cosface", "proxy-anchor",
          "concat", "concat+flip-both", "mobilenet-head", "mobilenet-backbone")
BACKBONE_EPOCHS = 8
BACKBONE_LR = 3e-4


def features(encoder: str, paths: list[str], flip: bool, batch: int = 64) -> np.ndarray:
    """Backbone features of images (mirrored when `flip`), L2-normalised."""
    name, weights = ENCODERS[encoder]
    backbone = load_encoder(name, str(weights))
    out = []
    for i in range(0, len(paths), batch):
        x = np.stack([decode_image(p).numpy() for p in paths[i:i + batch]])
        out.append(backbone(x[:, :, ::-1] if flip else x))
    f = np.concatenate(out)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def margin_loss(kind: str, n_classes: int) -> Any:
    """CosFace (additive cosine margin, scale 30, margin 0.2) or Proxy-Anchor (alpha 32, delta 0.1) over cosines."""
    tf = tfenv.tensorflow()

    def cosface(y, cos):  # noqa: ANN001, ANN202
        onehot = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), n_classes)
        logits = 30.0 * (cos - 0.2 * onehot)
        return tf.nn.softmax_cross_entropy_with_logits(onehot, logits)

    def proxy_anchor(y, cos):  # noqa: ANN001, ANN202
        onehot = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), n_classes)
        pos = tf.reduce_sum(onehot * tf.exp(-32.0 * (cos - 0.1)), axis=0)
        neg = tf.reduce_sum((1 - onehot) * tf.exp(32.0 * (cos + 0.1)), axis=0)
        with_pos = tf.reduce_sum(tf.cast(tf.reduce_sum(onehot, axis=0) > 0, tf.float32))
        loss = tf.reduce_sum(tf.math.log1p(pos)) / tf.maximum(with_pos, 1.0) + \
            tf.reduce_mean(tf.math.log1p(neg))
        return tf.fill(tf.shape(cos)[:1], loss)

    return cosface if kind == "cosface" else proxy_anchor


def train(x: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, loss: str = "softmax",
          extra: tuple[np.ndarray, np.ndarray] | None = None, dim: int = 256) -> Any:
    """Train finetune's head (or its variant with another loss) on rows `fit`, stopping on rows `val`."""
    keras = tfenv.keras()
    keras.utils.set_random_seed(0)
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


def expand(queries: np.ndarray, base: np.ndarray, n: int = QE_IMAGES) -> np.ndarray:
    """Query expansion: each query plus its n nearest catalog images, weighted by similarity, renormalised."""
    sims = queries @ base.T
    top = np.argpartition(-sims, n, axis=1)[:, :n]
    weights = np.take_along_axis(sims, top, axis=1)
    expanded = queries + (base[top] * weights[..., None]).sum(axis=1)
    return expanded / np.linalg.norm(expanded, axis=1, keepdims=True)


def score(dataset: str, base: np.ndarray, queries: np.ndarray, catalog: Any, qcat: Any) -> tuple[float, float]:
    """(quality, ms per query): fashion p@5 of articleType, grocery product p@1; products scored by `mix`."""
    _, codes = np.unique(catalog["product_id"].to_numpy(), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    lists = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    search = ProductSearch(base.astype(np.float32), *flatten(lists), scoring="mix")
    label = "articleType" if dataset == "fashion" else "name"
    product_label = np.array([catalog[label].iloc[int(rows[0])] for rows in lists])
    k = 5 if dataset == "fashion" else 1
    started = time.perf_counter()
    hits = [[product_label[h.product] == want for h in search.search(q.astype(np.float32), k)]
            for q, want in zip(queries, qcat[label], strict=True)]
    ms = 1000 * (time.perf_counter() - started) / len(queries)
    return float(np.mean([sum(h) / k for h in hits])), ms


def main(argv: list[str] | None = None) -> None:
    """Prepare the dataset, compute features, run every lever and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion", "grocery"), required=True)
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS))
    parser.add_argument("--work-dir", type=Path, default=None)
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
        for encoder in ("mediapipe", "mobilenet"):
            for flip in (False, True):
                cached = work / f"{encoder}-{int(flip)}.npz"
                if not cached.is_file():
                    np.savez(cached, base=features(encoder, paths, flip), queries=features(encoder, qpaths, flip))
                with np.load(cached) as f:
                    feats[encoder, flip] = (f["base"], f["queries"])
        _, y = np.unique(catalog[label].to_numpy(), return_inverse=True)
        fit, val = holdout_rows(y, 0.1, 0)
        mp, mp_flip = feats["mediapipe", False], feats["mediapipe", True]
        cat = tuple(np.concatenate([a, b], axis=1) for a, b in zip(mp, feats["mobilenet", False], strict=True))
        cat_flip = tuple(np.concatenate([a, b], axis=1) for a, b in zip(mp_flip, feats["mobilenet", True],
                                                                         strict=True))
        rows = []
        for lever in args.levers:
            started = time.perf_counter()
            x, xf = (cat, cat_flip) if lever.startswith("concat") else (mp, mp_flip)
            if lever == "mobilenet-head":
                x = feats["mobilenet", False]
            if lever == "raw":
                base, queries = x
            elif lever == "mobilenet-backbone":
                images = pixels(paths)
                model = train_backbone(images, y, fit, val)
                base = model.predict(images, batch_size=64, verbose=0)
                queries = model.predict(pixels(qpaths), batch_size=64, verbose=0)
            else:
                loss = lever if lever in ("cosface", "proxy-anchor") else "softmax"
                extra = (xf[0][fit], y[fit]) if lever.endswith(("flip-train", "flip-both")) else None
                model = train(x[0], y, fit, val, loss, extra)
                tta = lever.endswith(("flip-tta", "flip-both"))
                xf = (None, None) if not tta else xf
                base = embed(model, x[0], xf[0] if tta else None)
                queries = embed(model, x[1], xf[1] if tta else None)
                if lever.endswith("qe"):
                    queries = expand(queries, base)
            seconds = time.perf_counter() - started
            quality, ms = score(args.dataset, base, queries, catalog, qcat)
            rows.append((lever, quality, seconds, ms))
            print(f"{lever:20s} {quality:.4f}  head {seconds:6.1f} s  search {ms:.2f} ms/query", flush=True)
    measure = "precision@5 (articleType)" if args.dataset == "fashion" else "product precision@1"
    print(f"\nquality_levers: {args.dataset}, {len(catalog)} catalog images, {len(qcat)} queries, MediaPipe "
          f"embedder (concat: + MobileNet v1 0.25), scoring mix; {measure}")
    for lever, quality, seconds, ms in rows:
        print(f"| {lever} | {quality:.3f} | {seconds / 60:.1f} min | {ms:.2f} ms |")


if __name__ == "__main__":
    main()
