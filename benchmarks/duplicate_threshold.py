"""Choose the near-duplicate threshold: how close edited copies of a photo stay, against how close products are.

For a sample of catalog products, the photo is edited the ways a duplicate listing differs from its original
(re-encoded as a low-quality JPEG, at 0.75x its size, cropped to its central 95%, brightened 10%, padded with
a 5% white border) and embedded with the index's own extractor; its cosine similarity to the original product's
vector is what a threshold must catch. Against it: each catalog product's similarity to its most similar other
product (whose share above a threshold is the share of the catalog a report would flag), and, as a check that a
group holds one item and not several similar ones, the share of grouped products whose metadata (`--agree`
columns: colour and article type on fashion) equals their group's first's. Prints, per threshold, the share of
edited copies caught (each edit and all), of products flagged, of grouped products that agree, and the groups.

    python -m benchmarks.duplicate_threshold --data-dir /tmp/fs-mp
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from runtime import artifacts
from runtime.duplicate_groups import find_groups, group_count, index_product_vectors
from runtime.extractor import load_extractor
from runtime.items import read_items
from runtime.layout import EXTRACTOR_DIR, ITEMS_FILE, Layout
from runtime.preprocess import prepare_array

THRESHOLDS = (0.85, 0.90, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99)


def _jpeg(img: Image.Image, quality: int = 40) -> Image.Image:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg q40": _jpeg,
    "0.75x size": lambda img: img.resize((max(8, img.width * 3 // 4), max(8, img.height * 3 // 4)), Image.BILINEAR),
    "crop 95%": lambda img: img.crop((img.width // 40, img.height // 40, img.width - img.width // 40,
                                      img.height - img.height // 40)),
    "bright +10%": lambda img: ImageEnhance.Brightness(img).enhance(1.10),
    "white border 5%": lambda img: ImageOps.expand(img, border=max(1, img.width // 20), fill="white"),
}


def nearest_other(vectors: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each row's highest cosine similarity to another row."""
    out = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), block):
        sims = vectors[start:start + block] @ vectors.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -2
        out[start:start + block] = sims.max(axis=1)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir with a current index")
    parser.add_argument("--sample", type=int, default=300, help="products whose photo is edited")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agree", default="baseColour,articleType",
                        help="metadata columns (or category) a true duplicate shares with its group's first")
    args = parser.parse_args(argv)
    layout = Layout(args.data_dir)
    folder = artifacts.resolve_index(layout.current_index)
    manifest = artifacts.verify(folder, check_hashes=False)
    items = read_items(folder / ITEMS_FILE)
    extractor = load_extractor(folder / EXTRACTOR_DIR)
    products = index_product_vectors(folder, manifest, items)

    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(items), min(args.sample, len(items)), replace=False)
    edited: dict[str, list[float]] = {name: [] for name in EDITS}
    for p in sample:
        with Image.open(layout.catalog / items[p]["images"][0]["image"]) as img:
            original = img.convert("RGB")
        for name, edit in EDITS.items():
            pixels = prepare_array(np.asarray(edit(original), np.uint8), extractor.input_size)[None]
            edited[name].append(float(extractor.embed(pixels)[0] @ products[p]))
    every = np.concatenate([np.asarray(v) for v in edited.values()])
    nearest = nearest_other(products)

    print(f"\nduplicate_threshold: index {folder.name} ({len(items)} products, {extractor.config['encoder']}), "
          f"{len(sample)} photos x {len(EDITS)} edits")
    print("edited copy vs its original, percentiles 1/5/50: " + "; ".join(
        f"{name} {np.percentile(v, 1):.3f}/{np.percentile(v, 5):.3f}/{np.percentile(v, 50):.3f}"
        for name, v in edited.items()))
    print(f"each product's most similar other product, percentiles 50/90/99: {np.percentile(nearest, 50):.3f}/"
          f"{np.percentile(nearest, 90):.3f}/{np.percentile(nearest, 99):.3f}")
    columns = [c for c in args.agree.split(",") if c]
    keys = np.array(["\x1f".join(str(item["category"] if c == "category" else item["metadata"].get(c, ""))
                                  for c in columns) for item in items])
    header = " | ".join(EDITS)
    print(f"| threshold | edited copies caught (all) | {header} | products with a product this close | grouped "
          f"products agreeing on {', '.join(columns)} | groups |")
    print("|" + " --- |" * (6 + len(EDITS)))
    for t in THRESHOLDS:
        first, _ = find_groups(products, t)
        groups = group_count(first)
        members = np.flatnonzero(first != np.arange(len(first)))
        agree = float(np.mean(keys[members] == keys[first[members]])) if len(members) else float("nan")
        caught = " | ".join(f"{np.mean(np.asarray(v) >= t):.3f}" for v in edited.values())
        print(f"| {t:.3f} | {np.mean(every >= t):.3f} | {caught} | {np.mean(nearest >= t):.3f} | {agree:.3f} | "
              f"{groups} |")


if __name__ == "__main__":
    main()
