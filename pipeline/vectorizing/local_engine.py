"""vectorize in this process: the shards whose stamp is not current, one after another, with a progress bar."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from pipeline.catalog.table import catalog_inputs
from pipeline.common.errors import require
from pipeline.features.cache import FeatureCache
from pipeline.vectorizing import shards
from runtime import embeddings, storage
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_CONFIG, Layout


def run(data_dir: Path, shard_rows: int, batch_size: int) -> dict:
    """Embed the catalog of a local data dir shard by shard, keeping the shards whose stamp is current.

    Returns:
        The summary written to `embeddings/embeddings.json` (`shards.finish`).
    """
    layout = Layout(Path(data_dir))
    catalog, keys, paths = catalog_inputs(layout)
    config = storage.read_json(require(layout.extractor / EXTRACTOR_CONFIG, "extractor", "finetune"))
    cache = FeatureCache(layout.features(config["encoder_fingerprint"]))
    stamps = shards.plan(layout, keys, config["export_id"], shard_rows)
    stale = [i for i, stamp in enumerate(stamps) if not embeddings.is_current(layout, i, stamp)]
    layout.embeddings.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    computed = 0
    if stale:  # the extractor (TensorFlow and the model) is loaded only when a shard needs it
        extractor = load_extractor(layout.extractor)
        with tqdm(total=cache.count_missing(keys), desc="vectorize", unit="img", disable=None) as bar:
            for i in stale:
                rows = slice(*stamps[i]["rows"])
                vectors, stamp, done = shards.embed_shard(extractor, cache, stamps[i], keys[rows], paths[rows],
                                                          batch_size, bar)
                embeddings.write_shard(layout, i, vectors, stamp)
                computed += done
    return shards.finish(layout, catalog, config, len(stamps), shard_rows, len(stamps) - len(stale), computed,
                         time.perf_counter() - started, "local")
