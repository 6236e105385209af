"""Does the index stage's exact-or-Annoy choice hold from one build to the next? Each repeat runs, in a fresh
process (cold, as a build is), the stage's measurement (`pipeline.indexing.annoy_tuning.serving_cost`) over a data dir's
current index, and a single pass of 20 scans with no warm-up (how the choice was made before): the figures and
the choice of each.

    python -m benchmarks.strategy --data-dir /tmp/fs-mp --repeats 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ONE_REPEAT = """
import json, time, numpy as np
from runtime import artifacts
from pipeline.indexing.annoy_tuning import choose_strategy, serving_cost, _sample
from runtime.topk import exact_top_k
folder = artifacts.resolve_index({folder!r})
manifest = artifacts.verify(folder, check_hashes=False)
index = artifacts.load_annoy(folder, manifest)
vectors = artifacts.load_vectors(folder, manifest, index)
started = time.perf_counter()
for item in _sample(len(vectors), 20, 1):  # the former measurement: one cold pass
    exact_top_k(vectors, vectors[item][None], 10)
single = 1000 * (time.perf_counter() - started) / 20
cost = serving_cost(index, vectors, manifest["search_k"])
print(json.dumps({{"single_pass_exact_ms": round(single, 3), "exact_ms": cost.exact_ms, "annoy_ms": cost.annoy_ms,
                   "strategy": choose_strategy(cost), "annoy_table_ms": manifest["search_k_measurements"][-1]
                   ["ms_per_query"] if manifest["search_k_measurements"] else None}}))
"""


def main(argv: list[str] | None = None) -> None:
    """Measure `--repeats` times, each in a new process, and print every figure and the choices."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    rows = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", ONE_REPEAT.format(folder=str(args.data_dir))], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        old = "exact" if row["annoy_table_ms"] is not None and row["single_pass_exact_ms"] < row["annoy_table_ms"] \
            else "annoy"
        rows.append({**row, "former_choice": old})
        print(f"repeat {repeat + 1}: {rows[-1]}", flush=True)
    for key in ("single_pass_exact_ms", "exact_ms", "annoy_ms"):
        values = np.array([r[key] for r in rows])
        print(f"{key}: median {np.median(values):.3f}, min {values.min():.3f}, max {values.max():.3f}")
    for key in ("strategy", "former_choice"):
        print(f"{key}: {dict(Counter(r[key] for r in rows))}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
