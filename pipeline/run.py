"""All stages in order: acquire -> finetune -> vectorize -> index -> evaluate (on a held-out split)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import acquire, evaluate, finetune, index, vectorize
from pipeline.encoders import DEFAULT_ENCODER
from pipeline.layout import Layout

log = logging.getLogger(__name__)


def run(source: str, data_dir: Path, encoder: str = DEFAULT_ENCODER, encoder_weights: str | None = None,
        label_column: str = "category", eval_split: float = 0.0, dim: int = finetune.DEFAULT_DIM,
        no_finetune: bool = False, trees: int = index.DEFAULT_TREES, category_column: str | None = None) -> dict:
    """Run every stage on one source and return each stage's summary.

    Args:
        source: any acquire source.
        data_dir: the data directory all stages share.
        encoder: backbone name; encoder_weights: its weights file where it takes one.
        label_column: what the head learns and what evaluation counts as a correct result.
        eval_split: fraction of the catalog held out as queries (0: no evaluation).
        dim: embedding length; no_finetune: keep raw backbone features.
        trees: Annoy trees.
        category_column: the source column that names the category.
    """
    layout = Layout(Path(data_dir))
    summaries = {"acquire": acquire.run(source, data_dir, category_column, holdout=eval_split,
                                        holdout_column=label_column)}
    summaries["finetune"] = finetune.run(data_dir, encoder, encoder_weights, label_column, dim, no_finetune)
    summaries["vectorize"] = vectorize.run(data_dir)
    summaries["index"] = index.run(data_dir, trees)
    if eval_split:
        summaries["evaluate"] = evaluate.run(layout.current_index, f"csv:{layout.queries_csv}", label_column,
                                             report=layout.eval / "report.json", work_dir=layout.eval / "queries")
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the end-to-end run."""
    parser.add_argument("--source", required=True, help="any acquire source (see `python -m pipeline acquire -h`)")
    parser.add_argument("--category-column", default=None, help="source column naming the category")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="backbone (see `python -m pipeline finetune -h`)")
    parser.add_argument("--encoder-weights", default=None, help="the backbone's weights file")
    parser.add_argument("--label-column", default="category", help="column the head learns and evaluation checks")
    parser.add_argument("--eval-split", type=float, default=0.0, help="fraction held out as evaluation queries")
    parser.add_argument("--dim", type=int, default=finetune.DEFAULT_DIM, help="embedding length")
    parser.add_argument("--no-finetune", action="store_true", help="keep raw backbone features")
    parser.add_argument("--trees", type=int, default=index.DEFAULT_TREES, help="Annoy trees")


def main(args: argparse.Namespace) -> None:
    """Run every stage and print what each produced."""
    s = run(args.source, args.data_dir, args.encoder, args.encoder_weights, args.label_column, args.eval_split,
            args.dim, args.no_finetune, args.trees, args.category_column)
    a, m = s["acquire"], s["index"]
    print(f"acquire:   {a['input_rows']} rows -> {a['accepted']} products, {a['held_out']} held out, "
          f"{a['rejected']} rejected ({', '.join(f'{v} {k}' for k, v in a['reject_reasons'].items()) or 'none'}), "
          f"{a['duplicates']} duplicates flagged")
    print(f"finetune:  {s['finetune']['encoder']}, {s['finetune']['backbone_images_computed']} backbone passes")
    print(f"vectorize: {s['vectorize']['rows']} embeddings, {s['vectorize']['backbone_images_computed']} new passes")
    index_dir = Layout(args.data_dir).index / m["version"]
    print(f"index:     {m['count']} items, {m['dim']}-d, {m['n_trees']} trees, search_k {m['search_k']} -> {index_dir}")
    if "evaluate" in s:
        e = s["evaluate"]
        print(f"evaluate:  {e['n_queries']} queries: precision@1 {e['precision_at_1']}, @5 {e['precision_at_5']}, "
              f"@10 {e['precision_at_10']}, mAP@10 {e['map_at_10']}, ANN recall@10 {e['ann_recall_at_10']}, "
              f"p50 {e['latency_ms_p50']} ms -> {Layout(args.data_dir).eval}/report.json (+ report.png)")
