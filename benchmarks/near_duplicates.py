"""Near-duplicates through Annoy candidates against every pair compared, and the per-index threshold's outcome.

On a data dir's current index: the threshold the calibration chooses (the median similarity of a product to its
nearest other product, the rule, any raise for group size), the groups it makes (how many, how large, the share of
grouped products whose `--agree` columns equal their group's first's: "the same item"), and, at that threshold
and at each `--thresholds` value, how many of the groups that comparing every pair makes (`find_groups`) the
Annoy candidates reproduce exactly, with both timings. With `--synthetic N`: N clustered 256-d vectors of which
1% are noisy copies of others, a 32-tree Annoy index, and the share of planted copies the candidates find.

    python -m benchmarks.near_duplicates --data-dir /tmp/fs-mp --thresholds 0.95,0.985
    python -m benchmarks.near_duplicates --synthetic 1000000
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from benchmarks.vectors import clustered
from pipeline.indexing.duplicate_search import DISTANCE_FACTOR, Neighbours, calibrate, find, of_index
from runtime import artifacts
from runtime.duplicate_groups import find_groups, group_count
from runtime.items import read_items
from runtime.layout import ITEMS_FILE, Layout


def agreement(first: np.ndarray, keys: np.ndarray) -> float:
    """The share of grouped products (not their group's first) whose key equals their first's."""
    members = np.flatnonzero(first != np.arange(len(first)))
    return float(np.mean(keys[members] == keys[first[members]])) if len(members) else float("nan")


def reproduced(found: np.ndarray, exact: np.ndarray) -> tuple[int, int, float]:
    """(exact groups of 2+ reproduced member for member, exact groups of 2+, share of products grouped alike)."""
    sizes = np.bincount(exact, minlength=len(exact))
    heads = np.flatnonzero(sizes > 1)
    same = sum(1 for g in heads if np.array_equal(np.flatnonzero(found == g), np.flatnonzero(exact == g)))
    return same, len(heads), float(np.mean(found == exact))


def on_index(data_dir: Path, agree: list[str], thresholds: list[float], factors: list[float]) -> None:
    """Print the calibration and the reproduction table for a data dir's current index."""
    folder = artifacts.resolve_index(Layout(data_dir).current_index)
    manifest = artifacts.verify(folder, check_hashes=False)
    items = read_items(folder / ITEMS_FILE)
    neighbours = of_index(folder, manifest, items)
    products = np.asarray(neighbours.vectors, np.float32)
    n_images = manifest["count"]
    keys = np.array(["\x1f".join(str(item["category"] if c == "category" else item["metadata"].get(c, ""))
                                 for c in agree) for item in items])
    _first, _, info = find(neighbours)
    c = info["calibration"]
    print(f"\nnear_duplicates: {data_dir} index {folder.name}: {len(items)} products, {n_images} images, "
          f"{manifest['encoder']}")
    print(f"calibrated: median similarity to the nearest other product {c['median_nearest_similarity']} "
          f"(sample {c['sample']}) -> threshold {info['threshold']}"
          + (f" (raised from {c['raised'][0]['threshold']}: a group of {c['raised'][0]['largest_group']})"
             if c["raised"] else ""))
    print(f"| threshold | groups (exact / Annoy) | reproduced member for member | products grouped alike | "
          f"products in groups | largest | agreeing on {', '.join(agree)} | Annoy s | exact s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    nearest = neighbours.nearest_other(np.arange(len(items)))
    rows = [(f"calibrated, factor {DISTANCE_FACTOR} (default): {info['threshold']}", info["threshold"])]
    rows += [(f"factor {f}: {calibrate(nearest, f)[0]}", calibrate(nearest, f)[0]) for f in factors]
    for label, threshold in rows + [(str(t), t) for t in thresholds]:
        started = time.perf_counter()
        found, _, found_info = find(neighbours, threshold)
        ann_s = time.perf_counter() - started
        started = time.perf_counter()
        exact, _ = find_groups(products, threshold)
        exact_s = time.perf_counter() - started
        same, total, alike = reproduced(found, exact)
        print(f"| {label} | {total} / {group_count(found)} | {same} of {total} | {alike:.4f} | "
              f"{found_info['products_in_groups']} | {found_info['largest_group']} | {agreement(found, keys):.3f} | "
              f"{ann_s:.2f} | {exact_s:.2f} |")


def synthetic(n: int, dim: int = 256, trees: int = 32, seed: int = 0) -> None:
    """Print the candidates' time, memory and recall of planted copies on N synthetic vectors."""
    from annoy import AnnoyIndex

    vectors = clustered(n, dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    m = max(1, n // 100)
    sources = rng.choice(n // 2, m, replace=False)
    copies = n // 2 + rng.choice(n - n // 2, m, replace=False)
    noise = rng.choice([0.05, 0.1, 0.2], m)[:, None] / np.sqrt(dim)
    vectors[copies] = vectors[sources] + noise * rng.standard_normal((m, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    annoy = AnnoyIndex(dim, "angular")
    for i in range(n):
        annoy.add_item(i, vectors[i])
    started = time.perf_counter()
    annoy.build(trees, n_jobs=-1)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    first, _, info = find(Neighbours(annoy, vectors))
    seconds = time.perf_counter() - started
    planted = np.sum(vectors[copies] * vectors[sources], axis=1) >= info["threshold"]
    found = first[copies[planted]] == first[sources[planted]]
    print(f"\nnear_duplicates --synthetic {n}: {dim}-d, {trees} trees (built in {build_s:.1f} s), {m} planted copies")
    print(f"threshold {info['threshold']} (median nearest similarity "
          f"{info['calibration']['median_nearest_similarity']}); {int(planted.sum())} copies at or above it, "
          f"{found.mean():.4f} of them grouped with their original; {info['products_in_groups']} products in groups, "
          f"largest {info['largest_group']}; {seconds:.1f} s ({1e6 * seconds / n:.1f} us per product); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a data dir with a current index")
    parser.add_argument("--agree", default="baseColour,articleType",
                        help="metadata columns (or category) a true duplicate shares with its group's first")
    parser.add_argument("--thresholds", default="", help="fixed thresholds to compare too, comma-separated")
    parser.add_argument("--factors", default="", help="other calibration factors to compare, comma-separated")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic vectors with planted copies instead")
    args = parser.parse_args(argv)
    if args.synthetic:
        synthetic(args.synthetic)
    elif args.data_dir:
        on_index(args.data_dir, [c for c in args.agree.split(",") if c],
                 [float(t) for t in args.thresholds.split(",") if t], [float(f) for f in args.factors.split(",") if f])
    else:
        parser.error("give --data-dir or --synthetic")


if __name__ == "__main__":
    main()
