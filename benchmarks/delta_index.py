"""The index stage's delta path at scale: seconds and peak RSS of `pipeline index` when a share of the products
changed, against the full build that the data dir's current version took.

It renames `--share` of the products in DATA's catalog.csv (a name change moves no row, so the embeddings still
match), runs `python -m pipeline index` in a fresh process, which compares every product with the current full
version and writes a delta, and reports the stage's time, its peak RSS and the manifest's `changes`. Afterwards
the catalog, `index/current` and the index folder are as they were.

    python -m benchmarks.index_scale --sizes 1000000 --extractor-from /tmp/fs-mp --work /tmp/scale --keep
    python -m benchmarks.delta_index --data-dir /tmp/scale/n1000000 --share 0.01
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from runtime import artifacts, storage, versions
from runtime.layout import MANIFEST, Layout


def main(argv: list[str] | None = None) -> None:
    """Rename a share of the products, index, report, restore."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir whose current index is full")
    parser.add_argument("--share", type=float, default=0.01, help="share of the products renamed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    layout = Layout(args.data_dir)
    base = layout.current_index.resolve()
    base_manifest = artifacts.verify(base, check_hashes=False)
    if base_manifest.get("delta"):
        raise SystemExit(f"{base} is a delta; give a data dir whose current index is a full version")
    saved = layout.catalog_csv.with_name("catalog.csv.delta-index-benchmark")
    shutil.copy2(layout.catalog_csv, saved)
    try:
        catalog = pd.read_csv(layout.catalog_csv, dtype=str, keep_default_na=False)
        products = catalog["product_id"].unique()
        rng = np.random.default_rng(args.seed)
        renamed = set(rng.choice(products, max(1, int(len(products) * args.share)), replace=False).tolist())
        rows = catalog["product_id"].isin(renamed)
        catalog.loc[rows, "name"] = catalog.loc[rows, "name"] + " (renamed)"
        tmp = layout.catalog_csv.with_name(".catalog.csv.tmp")
        catalog.to_csv(tmp, index=False)
        os.replace(tmp, layout.catalog_csv)
        del catalog
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "index", "--data-dir", str(args.data_dir),
                                    "--trees", str(base_manifest["n_trees"]), "--delta-limit", "1"],
                                   stdout=subprocess.DEVNULL)  # the delta path whatever the share: what is measured
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"pipeline index exited {os.waitstatus_to_exitcode(status)}")
        manifest = storage.read_json(layout.current_index / MANIFEST)
    finally:
        os.replace(saved, layout.catalog_csv)
        delta = layout.current_index.resolve()
        versions.point_local(layout.index, base.name)
        if delta != base:
            shutil.rmtree(delta, ignore_errors=True)
    if not manifest.get("delta"):
        raise SystemExit(f"the stage built a full version, not a delta: {manifest.get('changes')}")
    print(f"delta_index: {args.data_dir}, {base_manifest['products']:,} products, {len(renamed):,} renamed "
          f"({args.share:.1%})")
    print(f"index stage: {seconds:.1f} s (of which the delta's comparison and writing {manifest['changes']['seconds']}"
          f" s), peak RSS {usage.ru_maxrss / 2**20:.2f} GiB; changes {manifest['changes']}; the full build of this "
          f"version took {base_manifest['build_seconds']} s of Annoy build alone")


if __name__ == "__main__":
    main()
