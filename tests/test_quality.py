"""Retrieval quality on the real catalog in ../shared/data/fashion-small (8,000 photos; label articleType); grocery's
is in test_quality_grocery.py, so that pytest-xdist's `--dist loadscope` runs the two modules side by side.

10% of the catalog is held out as queries against the other 90%. The fine-tuned head must beat the same
encoder's raw features and reach the agreed floors: precision@5 >= 0.85 (MediaPipe embedder, its backbone trained
4 epochs by default: 0.864 measured), >= 0.84 (MobileNet v1 0.25, backbone trained 8 epochs by default) and
>= 0.87 (the two side by side, MobileNet trained with its own head first: 0.884 measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import evaluate, finetune, index, run, vectorize
from runtime.layout import Layout
from tests.conftest import shared_path

MEDIAPIPE = ("models", "mobilenet_v3_small_075_224_embedder.tflite")
MOBILENET = ("models", "mobilenet_2_5_224_tf_no_top.h5")
CASES = [
    ("mediapipe-embedder", [MEDIAPIPE], 0.85),  # backbone trained: 0.864 measured
    ("mobilenet-v1-0.25", [MOBILENET], 0.84),  # backbone trained: 0.863 measured
    ("mediapipe-embedder+mobilenet-v1-0.25", [MEDIAPIPE, MOBILENET], 0.87),
]
FASHION_RUNS: list[str] = []  # the encoders run so far in `fashion_dir`, in order


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the three fashion runs, as a merchandiser trying encoders one after another has: the
    composite then finds MediaPipe's features and MobileNet's trained backbone (`cache/tuned`) made by the runs
    before it, and trains only its own head."""
    return tmp_path_factory.mktemp("fashion-small")


@pytest.mark.slow  # the three run in this order in one data dir: `--dist loadscope` keeps a module on one worker
@pytest.mark.parametrize("encoder, weights, floor", CASES, ids=["mediapipe", "mobilenet", "composite"])
def test_finetuned_head_beats_raw_features_on_fashion_small(encoder: str, weights: list[tuple[str, str]],
                                                             floor: float, fashion_dir: Path) -> None:
    catalog = shared_path("data", "fashion-small")
    weights_file = "+".join(str(shared_path(*w)) for w in weights)
    layout = Layout(fashion_dir)
    summaries = run.run(f"fashion:{catalog}", fashion_dir, encoder, weights_file, label_column="articleType",
                        eval_split=0.1)
    ran_before = list(FASHION_RUNS)
    FASHION_RUNS.append(encoder)
    acquired = summaries["acquire"]
    assert acquired["input_rows"] == 42_863  # every styles.csv row is accounted for
    assert acquired["reject_reasons"]["image missing"] == 42_863 - 8_000
    assert acquired["accepted"] + acquired["held_out"] == 8_000 and acquired["duplicates"] >= 50
    tuned = summaries["evaluate"]
    assert tuned["n_queries"] == acquired["held_out"] > 700
    # One backbone pass per catalog image for finetune (exact duplicates share theirs); vectorize reuses those
    # features, unless finetune trained the backbone itself (by default for a single backbone), whose features are
    # new.
    assert summaries["finetune"]["backbone_images_computed"] <= acquired["accepted"]
    tuned_backbone = summaries["finetune"].get("backbone_epochs", 0) > 0
    assert tuned_backbone == ("+" not in encoder)
    if "+" in encoder:  # MobileNet trained with its own head, beside MediaPipe's raw features (its part stays frozen)
        assert [p["backbone_epochs"] for p in summaries["finetune"]["parts"]] == [0, 8]
        # loaded as the MobileNet run trained it, when that run came first in this data dir
        assert summaries["finetune"]["parts"][1]["reused"] == ("mobilenet-v1-0.25" in ran_before)
    else:
        assert summaries["finetune"]["backbone_reused"] is False
    computed, rows = summaries["vectorize"]["backbone_images_computed"], summaries["vectorize"]["rows"]
    assert rows * 0.95 < computed <= rows if tuned_backbone else computed == 0

    finetune.run(fashion_dir, encoder=encoder, encoder_weights=weights_file, label_column="articleType",
                 no_finetune=True)
    vectorize.run(fashion_dir)
    index.run(fashion_dir)
    raw = evaluate.run(fashion_dir, f"csv:{layout.queries_csv}", label_column="articleType",
                       report=layout.eval / "raw.json")
    print(json.dumps({"encoder": encoder, "finetuned": tuned, "raw": raw}))
    assert tuned["precision_at_5"] >= floor, tuned
    assert tuned["precision_at_5"] > raw["precision_at_5"] + 0.01, (tuned, raw)
    assert raw["precision_at_5"] > 0.6  # raw 32x32 pixels give about 0.55; real features must beat that
    assert tuned["ann_recall_at_10"] >= 0.97
