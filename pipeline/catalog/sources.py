"""Read a catalog source (Kaggle fashion layout, folders, CSV manifest, S3, Kaggle API) into product records."""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from pipeline.catalog.grocery import read_grocery
from pipeline.catalog.records import Record, Reject, SourceError
from runtime import storage
from runtime.layout import KAGGLE_DIR, S3_MIRROR_DIR

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FOOD11_NAME = re.compile(r"^(\d+)_(\d+)$")
URL = re.compile(r"^(https?|s3)://")
KINDS = ("fashion", "folders", "csv", "grocery", "kaggle")
CSV_REQUIRED = ("id", "name", "category")  # and an image column: `image`, `images` or both
IMAGES_SEPARATOR = "|"  # a manifest's `images` column lists several images of one product
SOURCE_HELP = ("fashion:DIR | folders:DIR | csv:FILE | grocery:DIR | kaggle:OWNER/DATASET; DIR and FILE may be "
               "s3://bucket/prefix")
DEFAULT_LABELS = {"grocery": "name"}  # what the head learns by default: the product itself (docs/quality.md, grocery)
# multi-crop views by default (runtime.views): shelf photos whose details tell products apart, as measured
# in docs/quality.md, "Quality levers"
DEFAULT_MULTICROP = {"grocery": 0.5}


def parse_source(spec: str) -> tuple[str, str]:
    """Split `KIND:LOCATION` into its parts, guessing the kind for a bare local path or s3:// URI."""
    kind, sep, location = spec.partition(":")
    if sep and kind in KINDS:
        return kind, location
    if spec.startswith("s3://") or not sep or os.path.exists(spec):
        if spec.endswith(".csv"):
            return "csv", spec
        if spec.startswith("s3://"):
            return "fashion" if storage.s3_exists(spec.rstrip("/") + "/styles.csv") else "folders", spec
        return ("fashion" if (Path(spec) / "styles.csv").exists() else "folders"), spec
    raise SourceError(f"unknown source {spec!r}: use one of {', '.join(k + ':...' for k in KINDS)} "
                      "(a location may be an s3://bucket/prefix)")


def _kind(spec: str | None) -> str:
    """A source's kind (`grocery`, `fashion`, ...), or "" when there is none or it cannot be parsed."""
    try:
        return parse_source(spec)[0] if spec else ""
    except SourceError:
        return ""


def default_label(spec: str | None) -> str:
    """The catalog column the head learns by default for a source: `name` (the product) for grocery, else category."""
    return DEFAULT_LABELS.get(_kind(spec), "category")


def default_multicrop(spec: str | None) -> float:
    """The multi-crop fraction finetune uses by default for a source: 0.5 for grocery, else 0 (whole image only)."""
    return DEFAULT_MULTICROP.get(_kind(spec), 0.0)


def read_source(spec: str, cache_dir: Path, category_column: str | None = None) -> tuple[list[Record], list[Reject]]:
    """Read every product row of a source.

    Args:
        spec: `fashion:DIR`, `folders:DIR`, `csv:FILE`, `grocery:DIR` or `kaggle:OWNER/DATASET`; DIR and FILE
            may be `s3://bucket/prefix`, which is mirrored into `cache_dir` first.
        cache_dir: where remote sources are downloaded to.
        category_column: the metadata column that names a product's category (fashion: articleType).

    Returns:
        The readable records (one per image: a product with several images has several records with its
        product id), and the rows rejected before any image was opened.

    Raises:
        SourceError: the source does not exist or lacks what its layout requires.
    """
    kind, location = parse_source(spec)
    if kind == "kaggle":
        local = _kaggle_download(location, cache_dir / KAGGLE_DIR)
        styles = next(local.rglob("styles.csv"), None)
        kind = "fashion" if styles else "folders"
        local = styles.parent if styles else local
    elif location.startswith("s3://"):
        local = _mirror(kind, location, cache_dir / S3_MIRROR_DIR)
    else:
        local = Path(location)
    if not local.exists():
        raise SourceError(f"{kind} source not found: {local}")
    if kind == "fashion":
        return read_fashion(local, category_column or "articleType")
    if kind == "folders":
        return read_folders(local)
    if kind == "csv":
        return read_csv_manifest(local, category_column or "category")
    if kind == "grocery":
        return read_grocery(local, category_column)
    raise SourceError(f"unknown source kind {kind!r}; expected one of {KINDS}")


def _mirror(kind: str, uri: str, mirror_dir: Path) -> Path:
    """The local mirror of an s3:// source (`runtime.storage.mirror_s3`): of a manifest's folder for a csv source, as
    its image paths are relative to it."""
    try:
        if kind == "csv":
            prefix, _, name = uri.rpartition("/")
            return storage.mirror_s3(prefix, mirror_dir) / name
        return storage.mirror_s3(uri, mirror_dir)
    except (ValueError, FileNotFoundError) as exc:  # not an s3://bucket URI, or nothing under the prefix
        raise SourceError(f"{kind} source {uri}: {exc}") from exc


def read_fashion(root: Path, category_column: str = "articleType") -> tuple[list[Record], list[Reject]]:
    """Read the Kaggle "Fashion Product Images" layout: `styles.csv` plus `images/<id>.jpg`."""
    styles = root / "styles.csv"
    if not styles.is_file():
        raise SourceError(f"{root} has no styles.csv: not the Kaggle Fashion Product Images layout")
    images_dir = root / "images"
    on_disk = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS} \
        if images_dir.is_dir() else {}
    records, rejects, seen = [], [], set()
    with open(styles, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or "id" not in header:
            raise SourceError(f"{styles} has no 'id' column in its header")
        if category_column not in header:
            raise SourceError(f"{styles} has no {category_column!r} column; columns are {header}")
        for line_no, row in enumerate(reader, start=2):
            if not any(row):
                continue
            if len(row) > len(header):
                # Kaggle's styles.csv has unquoted commas in productDisplayName, its last column.
                row = [*row[:len(header) - 1], ",".join(row[len(header) - 1:])]
            if len(row) < len(header):
                rejects.append(Reject(row[0] if row else "", f"styles.csv:{line_no}",
                                      f"malformed row: {len(row)} fields, expected {len(header)}"))
                continue
            meta = dict(zip(header, (v.strip() for v in row), strict=True))
            pid = meta["id"]
            where = f"styles.csv:{line_no}"
            if pid in seen:
                rejects.append(Reject(pid, where, "duplicate product id"))
                continue
            seen.add(pid)
            if pid not in on_disk:
                rejects.append(Reject(pid, where, f"image missing: no images/{pid}.jpg"))
                continue
            name = meta.get("productDisplayName") or pid
            records.append(Record(pid, name, meta[category_column], str(on_disk[pid]), meta, where))
    rejects.extend(Reject(stem, str(on_disk[stem]), "image has no row in styles.csv")
                   for stem in sorted(set(on_disk) - seen))
    return records, rejects


def read_folders(root: Path) -> tuple[list[Record], list[Reject]]:
    """Read a folder-per-category tree, or Food-11 style `<classid>_<n>.jpg` files in any folder."""
    if not root.is_dir():
        raise SourceError(f"folders source is not a directory: {root}")
    records, rejects = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        pid = "_".join(rel.with_suffix("").parts)
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejects.append(Reject(pid, str(rel), f"not an image file extension ({path.suffix or 'none'})"))
            continue
        food = FOOD11_NAME.match(path.stem)
        if food:
            category = food.group(1)
        elif len(rel.parts) > 1:
            category = rel.parts[-2]
        else:
            category = "uncategorized"
        meta = {"path": str(rel)}
        records.append(Record(pid, path.stem.replace("_", " ").replace("-", " "), category, str(path), meta,
                              str(rel)))
    return records, rejects


def read_csv_manifest(path: Path, category_column: str = "category") -> tuple[list[Record], list[Reject]]:
    """Read a CSV manifest: id, name, category and an image column; the other columns are metadata.

    A product may have several images: its id repeated on several rows (one image each), or several images in
    one row's `images` column, separated by `|`. Relative image paths are relative to the manifest.
    """
    if not path.is_file():
        raise SourceError(f"csv manifest not found: {path}")
    folder = str(path.parent.resolve())  # once: resolving every image's path cost 56 us a row
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in CSV_REQUIRED if c not in header and not (c == "category" and category_column in header)]
        if "image" not in header and "images" not in header:
            missing.append("image (or images)")
        if missing:
            raise SourceError(f"{path} lacks required column(s) {missing}; it has {header}")
        records, rejects = [], []
        for line_no, row in enumerate(reader, start=2):
            where = f"{path.name}:{line_no}"
            pid = (row.get("id") or "").strip()
            images = [(row.get("image") or "").strip()]
            images += [p.strip() for p in (row.get("images") or "").split(IMAGES_SEPARATOR)]
            images = list(dict.fromkeys(p for p in images if p))  # in order, each once
            if not pid or not images:
                rejects.append(Reject(pid, where, "row lacks an id or an image"))
                continue
            meta = {k: (v or "").strip() for k, v in row.items() if k is not None and k != "images"}
            for given in images:
                image = given if URL.match(given) else os.path.normpath(os.path.join(folder, given))
                records.append(Record(pid, meta.get("name") or pid, meta.get(category_column, ""), image,
                                      {**meta, "image": given}, where))
    return records, rejects


def _kaggle_download(dataset: str, cache_dir: Path) -> Path:
    """Download and unzip a Kaggle dataset with the official API; clear errors without it."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset):
        raise SourceError(f"kaggle source must be kaggle:OWNER/DATASET, got {dataset!r}")
    target = cache_dir / dataset.replace("/", "__")
    if target.exists() and any(target.iterdir()):
        log.info("using the cached download of kaggle:%s in %s", dataset, target)
        return target
    has_env = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if not has_env and not (config_dir / "kaggle.json").is_file():
        raise SourceError("kaggle: no credentials; set KAGGLE_USERNAME and KAGGLE_KEY or put kaggle.json in "
                          f"{config_dir} (https://www.kaggle.com/settings, 'Create New Token')")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise SourceError("kaggle: the Kaggle API package is not installed; run `pip install kaggle`") from None
    api = KaggleApi()
    api.authenticate()
    target.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(dataset, path=str(target), unzip=True, quiet=False)
    except Exception as exc:
        raise SourceError(f"kaggle: could not download {dataset}: {exc}") from exc
    return target
