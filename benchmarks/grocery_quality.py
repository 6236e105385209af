"""Product-level quality on the grocery catalog: shelf photos (val.txt) as queries against the `grocery:` catalog.

    python -m benchmarks.grocery_quality [--encoder mediapipe-embedder --encoder-weights FILE] [--work-dir DIR]

One acquire of `grocery:../shared/data/grocery` (81 products: iconic image + train.txt photos), then for each head
label (none: raw backbone features; `category`: the coarse class; `name`: the product itself) a finetune and a
vectorize, and for each product scoring (max, mean, mix) an index and an evaluate with `--label-column name`:
precision@1 is "the first product returned is the one on the photo". Prints one table; docs/quality.md quotes it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED
from pipeline import acquire, evaluate, finetune, index, vectorize
from pipeline.catalog.grocery import queries_manifest
from runtime.products import SCORINGS

LABELS = ("none", "category", "name")


def main(argv: list[str] | None = None) -> None:
    """Run every label and scoring and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grocery", type=Path, default=SHARED / "data" / "grocery")
    parser.add_argument("--encoder", default="mediapipe-embedder")
    parser.add_argument("--encoder-weights",
                        default=str(SHARED / "models" / "mobilenet_v3_small_075_224_embedder.tflite"))
    parser.add_argument("--labels", nargs="+", default=list(LABELS), choices=LABELS)
    parser.add_argument("--scorings", nargs="+", default=list(SCORINGS), choices=SCORINGS)
    parser.add_argument("--multicrop", type=float, default=None,
                        help="finetune --multicrop (default: the grocery source's, 0.5; 0: whole images only)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data dirs here (default: temporary)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        base = work / "catalog"
        acquired = acquire.run(f"grocery:{args.grocery}", base)
        queries = work / "val.csv"
        n_queries = queries_manifest(args.grocery, queries)
        rows = []
        for label in args.labels:
            data = work / f"label-{label}"
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(base / "catalog", data / "catalog")
            started = time.perf_counter()
            tuned = finetune.run(data, encoder=args.encoder, encoder_weights=args.encoder_weights or None,
                                 label_column="category" if label == "none" else label, no_finetune=label == "none",
                                 multicrop=args.multicrop)
            finetune_s = time.perf_counter() - started
            vectorize.run(data)
            for scoring in args.scorings:
                index.run(data, trees=16, scoring=scoring)
                report = evaluate.run(data, f"csv:{queries}", label_column="name", k=5,
                                      report=data / "eval" / f"{scoring}.json", work_dir=work / "queries")
                rows.append((label, scoring, report, finetune_s, tuned.get("best_val_precision_at_5")))
    print(f"\ngrocery_quality: {acquired['accepted']} catalog images, {acquired['products']} products, "
          f"{n_queries} shelf photos (val.txt) as queries, encoder {args.encoder}, multicrop "
          f"{tuned['multicrop']}, label column name")
    print(f"{'head label':10s} {'scoring':8s} {'product p@1':>12s} {'p@5':>7s} {'mAP@10':>7s} {'query ms':>9s} "
          f"{'finetune s':>11s}")
    for label, scoring, r, seconds, _ in rows:
        print(f"{label:10s} {scoring:8s} {r['precision_at_1']:12.4f} {r['precision_at_5']:7.4f} {r['map_at_10']:7.4f} "
              f"{r['latency_ms_p50']:9.2f} {seconds:11.1f}")


if __name__ == "__main__":
    main()
