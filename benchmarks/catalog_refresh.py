"""What a nightly rerun costs: the first run, a rerun with nothing changed and a 1% delta, stage by stage.

A synthetic catalog of N products, each a real JPEG file on disk (a random 4x4 colour grid over one of 40
category colours, 96 px), is written with its `csv:` manifest; then acquire, finetune, vectorize, index and the
duplicates report run on it, each in a fresh process (`python -m pipeline <stage>`: seconds and the peak RSS the
kernel reports for it), three times: the first run, a rerun with nothing changed, and a rerun after a delta (0.5%
of products added with new photos, 0.5% removed, 1% renamed). Printed: each stage's seconds and peak RSS per run,
the totals, and the reruns' shares of the first run's time (targets: nothing changed <= 5%, the delta <= 15%).

    python -m benchmarks.catalog_refresh --n 100000 --work /tmp/refresh
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.common import SHARED
from benchmarks.feature_memory import peak_mib

CATEGORIES = 40
SIDE = 96
STAGES = ("acquire", "finetune", "vectorize", "index", "duplicates")
MEDIAPIPE = SHARED / "models" / "mobilenet_v3_small_075_224_embedder.tflite"


def write_product(folder: Path, i: int, rng: np.random.Generator) -> tuple[str, str]:
    """Write product i's photo (its category's colour under a random 4x4 grid); return (relative path, category)."""
    category = int(rng.integers(CATEGORIES))
    base = np.array([(category * 37) % 256, (category * 91) % 256, (category * 53) % 256], np.float32)
    grid = np.clip(base + rng.normal(0, 40, (4, 4, 3)), 0, 255).astype(np.uint8)
    rel = f"images/{i // 1000:04d}/{i}.jpg"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((SIDE, SIDE), Image.BILINEAR).save(folder / rel, "JPEG", quality=90)
    return rel, f"type-{category:02d}"


def make_catalog(folder: Path, n: int, seed: int = 0) -> Path:
    """Write N products' photos and their manifest (id, name, category, price, image); return the manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "category", "price", "image"])
        for i in tqdm(range(n), desc="photos", unit="img", disable=None, mininterval=1.0):
            rel, category = write_product(folder, i, rng)
            writer.writerow([f"P{i:07d}", f"Product {i}", category, f"{rng.uniform(5, 200):.2f}", rel])
    return manifest


def apply_delta(folder: Path, manifest: Path, added: float = 0.005, removed: float = 0.005, renamed: float = 0.01,
                seed: int = 1) -> dict[str, list[str]]:
    """Change the catalog as a day does: add products with new photos, remove some, rename others; return the
    product ids of each kind."""
    rng = np.random.default_rng(seed)
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    n = len(body)
    gone = set(rng.choice(n, int(n * removed), replace=False).tolist())
    renamed_rows = [i for i in rng.permutation(n).tolist() if i not in gone][:int(n * renamed)]
    for i in renamed_rows:
        body[i][1] = body[i][1] + " (new name)"
    kept = [row for i, row in enumerate(body) if i not in gone]
    first_new = max(int(row[0][1:]) for row in body) + 1
    new_ids = []
    for i in range(first_new, first_new + int(n * added)):
        rel, category = write_product(folder, i, rng)
        kept.append([f"P{i:07d}", f"Product {i}", category, f"{rng.uniform(5, 200):.2f}", rel])
        new_ids.append(f"P{i:07d}")
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *kept])
    return {"added": new_ids, "removed": [body[i][0] for i in sorted(gone)],
            "renamed": [body[i][0] for i in renamed_rows]}


def stage_commands(manifest: Path, data: Path, encoder: str, weights: str) -> dict[str, list[str]]:
    """The command line of each stage, as a merchandiser would type it."""
    python = [sys.executable, "-m", "pipeline"]
    common = ["--data-dir", str(data)]
    return {"acquire": [*python, "acquire", "--source", f"csv:{manifest}", *common],
            "finetune": [*python, "finetune", *common, "--encoder", encoder,
                         *(["--encoder-weights", weights] if weights else [])],
            "vectorize": [*python, "vectorize", *common],
            "index": [*python, "index", *common],
            "duplicates": [*python, "duplicates", *common]}


def run_all(commands: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """Run every stage in a fresh process; return {stage: (seconds, peak RSS MiB)}."""
    out = {}
    for stage in STAGES:
        rss, seconds = peak_mib(commands[stage])
        out[stage] = (seconds, rss)
        print(f"  {stage:10s} {seconds:8.1f} s  {rss:8.0f} MiB", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the three pipelines and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="products in the synthetic catalog")
    parser.add_argument("--work", type=Path, default=None, help="folder for the catalog and the data dir (kept)")
    parser.add_argument("--encoder", default="mediapipe-embedder")
    parser.add_argument("--encoder-weights", default=str(MEDIAPIPE))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        source, data = work / "source", work / "data"
        for folder in (source, data):
            shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        manifest = make_catalog(source, args.n)
        print(f"catalog_refresh: {args.n} products written in {time.perf_counter() - started:.0f} s", flush=True)
        commands = stage_commands(manifest, data, args.encoder, args.encoder_weights)
        runs = {}
        for name in ("first run", "nothing changed", "1% delta"):
            if name == "1% delta":
                delta = apply_delta(source, manifest)
                print("delta: " + ", ".join(f"{len(ids)} {kind}" for kind, ids in delta.items()), flush=True)
            print(name, flush=True)
            runs[name] = run_all(commands)
    first = sum(s for s, _ in runs["first run"].values())
    print(f"\ncatalog_refresh: N = {args.n} products ({args.encoder}), each stage in a fresh process; seconds and "
          "peak RSS (MiB)")
    print("| stage | " + " | ".join(f"{name} s | RSS" for name in runs) + " |")
    print("| --- |" + " --- | --- |" * len(runs))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{runs[name][stage][0]:.1f} | {runs[name][stage][1]:.0f}"
                                           for name in runs) + " |")
    totals = {name: sum(s for s, _ in stages.values()) for name, stages in runs.items()}
    print("| **total** | " + " | ".join(f"**{t:.1f}** | {max(r for _, r in runs[name].values()):.0f}"
                                        for name, t in totals.items()) + " |")
    print(f"nothing changed: {totals['nothing changed'] / first:.1%} of the first run (target <= 5%); 1% delta: "
          f"{totals['1% delta'] / first:.1%} (target <= 15%)")


if __name__ == "__main__":
    main()
