"""Web-sized copies of catalog images, named by content hash, so that an index folder can serve its own images."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from runtime import storage
from runtime.layout import THUMBS_DIR, thumbnail_name

log = logging.getLogger(__name__)

THUMB_SIDE = 320
THUMB_QUALITY = 85


def _make(job: tuple[Path, Path]) -> None:
    source, target = job
    with Image.open(source) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        img.save(tmp, "JPEG", quality=THUMB_QUALITY, optimize=True)
    os.replace(tmp, target)


def build_thumbnails(images: dict[str, Path], cache: Path, out: Path | None) -> int:
    """Write one thumbnail per distinct image hash into `out/thumbs/`, reusing those already in `cache`.

    Args:
        images: image sha256 -> the catalog's normalised JPEG.
        cache: a folder that keeps thumbnails between index builds (only new images are resized).
        out: the index folder being built; thumbnails are hard-linked (or copied) into it (None: only the cache).

    Returns:
        How many thumbnails had to be made.
    """
    cache.mkdir(parents=True, exist_ok=True)
    todo = [(src, cache / f"{sha}.jpg") for sha, src in images.items() if not (cache / f"{sha}.jpg").is_file()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(_make, todo), total=len(todo), desc="thumbnails", unit="img", disable=None))
    if out is None:
        return len(todo)
    (out / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    for sha in images:
        storage.link_or_copy(cache / f"{sha}.jpg", out / thumbnail_name(sha))
    return len(todo)
