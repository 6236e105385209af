"""Pictures a person would rather look at than read: training curves, query/result grids, contact sheets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

TILE = 128
CAPTION = 30
GOOD, BAD, QUERY, PLAIN = (40, 160, 70), (210, 50, 50), (60, 90, 200), (150, 150, 150)
TITLE = 18


def training_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Plot loss and accuracy per epoch (train and validation) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("loss", "accuracy", "precision_at_5") if m in history or f"val_{m}" in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(range(1, len(history[prefix + metric]) + 1), history[prefix + metric], style,
                        label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _tile(path: str, caption: str, colour: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    try:
        with Image.open(path) as img:
            thumb = ImageOps.contain(img.convert("RGB"), (TILE - 8, TILE - 8))
        tile.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    except OSError:
        ImageDraw.Draw(tile).text((8, TILE // 2), "(unreadable)", fill="black")
    draw = ImageDraw.Draw(tile)
    draw.rectangle([1, 1, TILE - 2, TILE - 2], outline=colour, width=4)
    for i, line in enumerate((caption[:22], caption[22:44])):
        draw.text((4, TILE + 2 + 13 * i), line, fill="black")
    return tile


def results_grid(rows: Sequence[tuple[tuple[str, str], Sequence[tuple[str, str, bool]]]], path: Path) -> None:
    """Draw one row per query: the query image, then its results framed green (same label) or red.

    Args:
        rows: (query image path, query caption) with a list of (result image path, caption, correct).
        path: the PNG to write.
    """
    width = 1 + max((len(results) for _, results in rows), default=0)
    grid = Image.new("RGB", (width * (TILE + 6), max(1, len(rows)) * (TILE + CAPTION + 6)), (235, 235, 235))
    for r, ((qpath, qcaption), results) in enumerate(rows):
        y = r * (TILE + CAPTION + 6)
        grid.paste(_tile(qpath, "Q: " + qcaption, QUERY), (0, y))
        for c, (rpath, caption, correct) in enumerate(results, start=1):
            grid.paste(_tile(rpath, caption, GOOD if correct else BAD), (c * (TILE + 6), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[str, str]]]], path: Path, min_columns: int = 1) -> None:
    """Draw one titled row per group of images (a near-duplicate group: its first product, then the others).

    Args:
        rows: (title, [(image path, caption)]) per row.
        path: the PNG to write.
        min_columns: the sheet is at least this many images wide (room for the titles).
    """
    width = max(min_columns, max((len(images) for _, images in rows), default=1))
    height = TITLE + TILE + CAPTION + 6
    sheet = Image.new("RGB", (max(1, width) * (TILE + 6), max(1, len(rows)) * height), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((8, 8), "no near-duplicates", fill="black")
    for r, (title, images) in enumerate(rows):
        y = r * height
        draw.text((4, y + 3), title, fill="black")
        for c, (image, caption) in enumerate(images):
            sheet.paste(_tile(image, caption, QUERY if c == 0 else PLAIN), (c * (TILE + 6), y + TITLE))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
