"""All stages in order: acquire -> finetune -> vectorize -> index -> evaluate (on a held-out split), then the
near-duplicates report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline import acquire, duplicates, evaluate, finetune, index, vectorize
from pipeline.catalog.sources import SOURCE_HELP, default_label
from pipeline.common import cli
from pipeline.encoders.backbones import DEFAULT_ENCODER
from runtime.layout import Layout, report_grid
from runtime.products import DEFAULT_SCORING, SCORINGS

log = logging.getLogger(__name__)


def run(source: str, data_dir: Path, encoder: str = DEFAULT_ENCODER, encoder_weights: str | None = None,
        label_column: str | None = None, eval_split: float = 0.0, dim: int = finetune.DEFAULT_DIM,
        no_finetune: bool = False, trees: int = index.DEFAULT_TREES, category_column: str | None = None,
        queries: str | None = None, backbone_epochs: int | None = None, multicrop: float | None = None,
        scoring: str = DEFAULT_SCORING, duplicate_threshold: float | None = None, retrain: str = "auto",
        delta_limit: float = index.DELTA_LIMIT) -> dict:
    """Run every stage on one source and return each stage's summary.

    Args:
        source: any acquire source.
        data_dir: the data directory all stages share.
        encoder: backbone name; encoder_weights: its weights file where it takes one.
        label_column: what the head learns and what evaluation counts as a correct result (default: the
            source's, `pipeline.catalog.sources.default_label`: `name`, the product itself, for grocery; else category).
        eval_split: fraction of the catalog's products held out as queries.
        queries: a query source to evaluate with instead of a held-out split (grocery: its val.txt photos).
        backbone_epochs: epochs of training the backbone itself after the head (None: the encoder's default).
        multicrop: pool features over multi-crop views of this share of the side (None: finetune's default, 0.5
            for grocery unless one backbone is trained, else 0; 0: off).
        dim: embedding length; no_finetune: keep raw backbone features.
        trees: Annoy trees.
        scoring: how a product's images' similarities make its score (max, mean or mix).
        duplicate_threshold: near-duplicates' cosine similarity; None calibrates it on the index.
        retrain: after the catalog changed, whether finetune trains again (auto, always, never).
        delta_limit: the largest changed share of the products that index writes as a delta version.
        category_column: the source column that names the category.
    """
    layout = Layout(Path(data_dir))
    label_column = label_column or default_label(source)
    summaries = {"acquire": acquire.run(source, data_dir, category_column=category_column, holdout=eval_split,
                                        holdout_column=label_column)}
    summaries["finetune"] = finetune.run(data_dir, encoder=encoder, encoder_weights=encoder_weights,
                                         label_column=label_column, dim=dim, no_finetune=no_finetune,
                                         backbone_epochs=backbone_epochs, multicrop=multicrop, retrain=retrain)
    summaries["vectorize"] = vectorize.run(data_dir)
    summaries["index"] = index.run(data_dir, trees=trees, scoring=scoring, duplicate_threshold=duplicate_threshold,
                                   delta_limit=delta_limit)
    if queries or eval_split:
        summaries["evaluate"] = evaluate.run(data_dir, queries or f"csv:{layout.queries_csv}",
                                             label_column=label_column)
    summaries["duplicates"] = duplicates.run(data_dir)
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the end-to-end run: one flag per keyword of `run`."""
    parser.add_argument("--source", required=True, help=SOURCE_HELP)
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory (see data/README.md)")
    parser.add_argument("--category-column", default=None, help="source column naming the category")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="backbone (see `python -m pipeline finetune -h`)")
    parser.add_argument("--encoder-weights", default=None, help="the backbone's weights file")
    parser.add_argument("--label-column", default=None,
                        help="column the head learns and evaluation checks (default: name for grocery, else category)")
    parser.add_argument("--eval-split", type=float, default=0.0, help="fraction of products held out as queries")
    parser.add_argument("--queries", default=None,
                        help="evaluate with this query source instead of a held-out split (grocery: the val.txt "
                             "photos, written by `python -m scripts.grocery_queries`)")
    parser.add_argument("--dim", type=int, default=finetune.DEFAULT_DIM, help="embedding length")
    parser.add_argument("--no-finetune", action="store_true", help="keep raw backbone features")
    parser.add_argument("--trees", type=int, default=index.DEFAULT_TREES, help="Annoy trees")
    parser.add_argument("--scoring", choices=SCORINGS, default=DEFAULT_SCORING,
                        help=f"a product's score from its images' similarities (default {DEFAULT_SCORING})")
    parser.add_argument("--duplicate-threshold", type=cli.threshold, default=None, metavar="auto|T",
                        help="near-duplicates' cosine similarity, for collapse=true (default auto: calibrated on the "
                             "index)")
    parser.add_argument("--retrain", choices=("auto", "always", "never"), default="auto",
                        help="after the catalog changed: auto (default) retrains when enough of it is new to the "
                             "model, always, or never; the same images and labels never retrain")
    parser.add_argument("--delta-limit", type=float, default=index.DELTA_LIMIT, metavar="SHARE",
                        help="index writes a delta version when at most this share of the products changed "
                             f"(default {index.DELTA_LIMIT}; 0: always a full build)")
    parser.add_argument("--backbone-epochs", type=int, default=None,
                        help="epochs of training the backbone itself after the head (default: the encoder's: "
                             f"{finetune.BACKBONE_EPOCHS}, else 0)")
    parser.add_argument("--multicrop", type=float, default=None,
                        help="pool features over the whole image and 5 crops of this share of the side (default 0.5 "
                             "for grocery unless one backbone is trained, else 0: off)")


def describe(summary: dict, options: dict) -> str:
    """What the command line prints after a run: one line per stage."""
    a, m, layout = summary["acquire"], summary["index"], Layout(options["data_dir"])
    reasons = ", ".join(f"{v} {k}" for k, v in a["reject_reasons"].items()) or "none"
    lines = [f"acquire:   {a['input_rows']} images -> {a['accepted']} accepted ({a['products']} products), "
             f"{a['held_out']} held out, "
             f"{a['rejected']} rejected ({reasons}), {a['duplicates']} duplicates flagged",
             f"finetune:  kept the model ({summary['finetune']['decision']})" if summary["finetune"].get("reused") else
             f"finetune:  {summary['finetune']['encoder']}, {summary['finetune']['backbone_images_computed']} "
             "backbone passes",
             f"vectorize: {summary['vectorize']['rows']} embeddings, "
             f"{summary['vectorize']['backbone_images_computed']} new passes",
             f"index:     nothing changed since version {m['version']}: no new version, index/current stays"
             if m.get("unchanged") else "index:     " + index.describe(m, options).removeprefix("index: ")
             if m.get("delta") else
             f"index:     {m['products']} products ({m['count']} images), {m['dim']}-d, {m['n_trees']} trees, "
             f"search_k {m['search_k']}, {m['duplicate_groups']} near-duplicate groups at {m['duplicate_threshold']} "
             f"-> {layout.index / m['version']}"]
    if "evaluate" in summary:
        e = summary["evaluate"]
        lines.append(f"evaluate:  {e['n_queries']} queries: precision@1 {e['precision_at_1']}, "
                     f"@5 {e['precision_at_5']}, @10 {e['precision_at_10']}, mAP@10 {e['map_at_10']}, "
                     f"ANN recall@10 {e['ann_recall_at_10']}, p50 {e['latency_ms_p50']} ms -> {layout.report} "
                     f"(+ {report_grid(layout.report).name})")
    if "duplicates" in summary:
        lines.append(duplicates.describe(summary["duplicates"], options))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every stage from the command line (`python -m pipeline.run --help`)."""
    cli.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
