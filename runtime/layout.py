"""The data contract: every folder and file name a stage writes and a later stage or the service reads.

Stages talk only through one data directory (data/README.md documents it); an index folder is what the
service loads. Readers and writers take their names from here, never from string literals of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# catalog/: acquire
CATALOG_DIR = "catalog"
CATALOG_CSV = "catalog.csv"
REJECTS_CSV = "rejects.csv"
VECTORIZE_REJECTS_CSV = "vectorize_rejects.csv"  # written by vectorize: images it could not read
QUERIES_CSV = "queries.csv"
CONFLICTS_CSV = "conflicts.csv"  # product metadata that differed between the rows of one product
CATALOG_SUMMARY = "summary.json"
IMAGES_DIR = "images"

# cache/: kept between runs, safe to delete
CACHE_DIR = "cache"
FEATURES_DIR = "features"
PIXELS_RECIPE = "pil1"  # changes when the model's input pixels do (from TF decoding to Pillow's: pil1)
FEATURE_PART = "part-{digest}.npy"  # float32 [n, F] ...
FEATURE_KEYS_SUFFIX = ".keys"  # ... and beside it the n image sha256s (64 bytes each), written last
FEATURE_PARTS = "part-*"
THUMBS_DIR = "thumbs"  # also inside every index folder
S3_MIRROR_DIR = "s3"
KAGGLE_DIR = "kaggle"
TUNED_DIR = "tuned"  # tuned/<training key>/: a head and the backbone trained with it (`pipeline.training.tuned_cache`)

# model/: finetune
MODEL_DIR = "model"
EXTRACTOR_DIR = "extractor"  # also inside every index folder
EXTRACTOR_CONFIG = "extractor.json"
EXTRACTOR_SAVEDMODEL = "model"  # format savedmodel: one SavedModel with embed, features and head
EXTRACTOR_TFLITE = "backbone.tflite"  # format tflite+head: the TFLite backbone ...
EXTRACTOR_HEAD = "head"  # ... and the head's SavedModel (also format composite's)
EXTRACTOR_HEAD_ARRAYS = "head.npz"  # the same head as arrays, when it is a dense layer between L2 norms (no TF)
EXTRACTOR_PARTS = "parts"  # format composite: parts/<i>/ holds backbone i (backbone.tflite, or model/ with features)
FINETUNE_SUMMARY = "finetune.json"
HISTORY = "history.json"
LABELS = "labels.json"
TRAINING_CURVES = "training_curves.png"
AUTOENCODER_WEIGHTS = "autoencoder.weights.h5"
AUTOENCODER_CURVES = "autoencoder_curves.png"
TRAINED_IMAGES = "trained_images.npy"  # uint64 [n]: the first 8 bytes of the sha256 of every image the model saw
TUNED_TFLITE = "backbone-tuned.tflite"  # a TFLite backbone (MediaPipe) after --backbone-epochs, as export copies it
SERVED_TFLITE = "backbone.tflite"  # a Keras backbone (EfficientNet-Lite2), frozen or trained, as export copies it
VIEWS_DIR = "views"  # the MediaPipe backbone cutting and pooling its multi-crop views itself, one file per backbone
TUNED_PARTS_DIR = "parts"  # a composite's trained MediaPipe part: its tuned backbone, and that plus its own head

# embeddings/: vectorize
EMBEDDINGS_DIR = "embeddings"
EMBEDDINGS_SUMMARY = "embeddings.json"
SHARD = "part-{index:05d}.npy"
SHARD_STAMP = "part-{index:05d}.json"
SHARD_FILES = "part-*"  # shards and their stamps

# index/: index. One folder per version, and what the service loads.
INDEX_DIR = "index"
CURRENT = "current"  # the symlink to the version being served
MANIFEST = "manifest.json"
INDEX_FILE = "index.ann"
ITEMS_FILE = "items.jsonl"
VECTORS_FILE = "vectors.npy"
DUPLICATES_FILE = "duplicates.npy"  # int [products]: the near-duplicate group (its first product) of each product
REMOVED_FILE = "removed.json"  # a delta version's: the product ids of its base that it no longer serves
ADDED_ITEMS = "added.jsonl"  # a delta version's new and changed products, as items.jsonl (ids from 0) ...
ADDED_VECTORS = "added.npy"  # ... and their images' vectors, float32 [n, dim]
THUMBNAIL = THUMBS_DIR + "/{sha256}.jpg"
S3_POINTER = "CURRENT"  # s3://bucket/prefix/CURRENT names the version folder to serve
# s3://bucket/prefix/blobs/<sha256>: every version's files, stored once by content; a version folder then holds
# only its manifest, whose S3 metadata says so (BLOB_LAYOUT). An instance keeps them in CACHE_BLOBS of its cache.
S3_BLOBS = "blobs"
BLOB_LAYOUT = ("layout", "blobs")
CACHE_BLOBS = ".blobs"

# eval/: evaluate
EVAL_DIR = "eval"
REPORT = "report.json"
REPORT_DETAILS = ".details.json"  # suffixes that replace .json of the report
REPORT_GRID = ".png"
EVAL_QUERIES_DIR = "queries"  # the query source acquired like a catalog: a data dir of its own

# reports/: duplicates
REPORTS_DIR = "reports"
NEAR_DUPLICATES_CSV = "near-duplicates.csv"
NEAR_DUPLICATES_PNG = "near-duplicates.png"

# held while a stage writes: index/.lock by index, .lock at the data dir's root by acquire (`pipeline.common.locks`)
LOCK = ".lock"

# Every path a run may write under a data dir, as glob patterns (data/README.md lists each one).
WRITTEN = (
    f"{CATALOG_DIR}/{CATALOG_CSV}", f"{CATALOG_DIR}/{REJECTS_CSV}", f"{CATALOG_DIR}/{VECTORIZE_REJECTS_CSV}",
    f"{CATALOG_DIR}/{QUERIES_CSV}", f"{CATALOG_DIR}/{CONFLICTS_CSV}",
    f"{CATALOG_DIR}/{CATALOG_SUMMARY}", f"{CATALOG_DIR}/{IMAGES_DIR}/*/*.jpg",
    f"{CACHE_DIR}/{FEATURES_DIR}/*/{FEATURE_PARTS}", f"{CACHE_DIR}/{THUMBS_DIR}/*.jpg",
    f"{CACHE_DIR}/{S3_MIRROR_DIR}/*", f"{CACHE_DIR}/{KAGGLE_DIR}/*", f"{CACHE_DIR}/{TUNED_DIR}/*/*",
    f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_CONFIG}", f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_SAVEDMODEL}/*",
    f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_TFLITE}", f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_HEAD}/*",
    f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_HEAD_ARRAYS}",
    f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_PARTS}/*",
    f"{MODEL_DIR}/{FINETUNE_SUMMARY}", f"{MODEL_DIR}/{HISTORY}", f"{MODEL_DIR}/{LABELS}",
    f"{MODEL_DIR}/{TRAINING_CURVES}", f"{MODEL_DIR}/{AUTOENCODER_WEIGHTS}", f"{MODEL_DIR}/{AUTOENCODER_CURVES}",
    f"{MODEL_DIR}/{TRAINED_IMAGES}", f"{MODEL_DIR}/{TUNED_TFLITE}", f"{MODEL_DIR}/{SERVED_TFLITE}",
    f"{MODEL_DIR}/{VIEWS_DIR}/*.tflite", f"{MODEL_DIR}/{TUNED_PARTS_DIR}/*.tflite",
    f"{EMBEDDINGS_DIR}/{SHARD_FILES}.npy", f"{EMBEDDINGS_DIR}/{SHARD_FILES}.json",
    f"{EMBEDDINGS_DIR}/{EMBEDDINGS_SUMMARY}",
    f"{INDEX_DIR}/*/{MANIFEST}", f"{INDEX_DIR}/*/{INDEX_FILE}", f"{INDEX_DIR}/*/{ITEMS_FILE}",
    f"{INDEX_DIR}/*/{VECTORS_FILE}", f"{INDEX_DIR}/*/{DUPLICATES_FILE}", f"{INDEX_DIR}/*/{REMOVED_FILE}",
    f"{INDEX_DIR}/*/{ADDED_ITEMS}", f"{INDEX_DIR}/*/{ADDED_VECTORS}",
    f"{INDEX_DIR}/*/{THUMBS_DIR}/*.jpg", f"{INDEX_DIR}/*/{EXTRACTOR_DIR}/*",
    f"{INDEX_DIR}/{CURRENT}", f"{INDEX_DIR}/{LOCK}", LOCK,
    f"{EVAL_DIR}/*{REPORT_DETAILS}", f"{EVAL_DIR}/*.json", f"{EVAL_DIR}/*{REPORT_GRID}",
    f"{EVAL_DIR}/{EVAL_QUERIES_DIR}/*",
    f"{REPORTS_DIR}/{NEAR_DUPLICATES_CSV}", f"{REPORTS_DIR}/{NEAR_DUPLICATES_PNG}",
)


@dataclass(frozen=True)
class Layout:
    """Paths of every stage's outputs under one data directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_DIR

    @property
    def catalog_csv(self) -> Path:
        return self.catalog / CATALOG_CSV

    @property
    def rejects_csv(self) -> Path:
        return self.catalog / REJECTS_CSV

    @property
    def vectorize_rejects_csv(self) -> Path:
        return self.catalog / VECTORIZE_REJECTS_CSV

    @property
    def queries_csv(self) -> Path:
        return self.catalog / QUERIES_CSV

    @property
    def conflicts_csv(self) -> Path:
        return self.catalog / CONFLICTS_CSV

    @property
    def catalog_summary(self) -> Path:
        return self.catalog / CATALOG_SUMMARY

    @property
    def images(self) -> Path:
        return self.catalog / IMAGES_DIR

    @property
    def cache(self) -> Path:
        return self.root / CACHE_DIR

    def features(self, fingerprint: str) -> Path:
        """The backbone-feature cache of one encoder (its name and weights make the fingerprint), for the pixels
        `runtime.imaging.model_pixels` makes: features of pixels decoded another way are not reused."""
        return self.cache / FEATURES_DIR / f"{fingerprint}-{PIXELS_RECIPE}"

    @property
    def thumbs_cache(self) -> Path:
        return self.cache / THUMBS_DIR

    @property
    def s3_mirror(self) -> Path:
        return self.cache / S3_MIRROR_DIR

    @property
    def kaggle_cache(self) -> Path:
        return self.cache / KAGGLE_DIR

    @property
    def tuned_cache(self) -> Path:
        """Trained backbones kept between runs, one folder per training key (`pipeline.training.tuned_cache`)."""
        return self.cache / TUNED_DIR

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def extractor(self) -> Path:
        return self.model / EXTRACTOR_DIR

    @property
    def finetune_summary(self) -> Path:
        return self.model / FINETUNE_SUMMARY

    @property
    def embeddings(self) -> Path:
        return self.root / EMBEDDINGS_DIR

    @property
    def embeddings_summary(self) -> Path:
        return self.embeddings / EMBEDDINGS_SUMMARY

    def shard(self, i: int) -> Path:
        """Embedding shard `i` (float32 unit vectors of catalog rows)."""
        return self.embeddings / SHARD.format(index=i)

    def shard_stamp(self, i: int) -> Path:
        """What shard `i` was made from."""
        return self.embeddings / SHARD_STAMP.format(index=i)

    @property
    def index(self) -> Path:
        return self.root / INDEX_DIR

    @property
    def current_index(self) -> Path:
        return self.index / CURRENT

    @property
    def eval(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def report(self) -> Path:
        return self.eval / REPORT

    @property
    def eval_queries(self) -> Path:
        return self.eval / EVAL_QUERIES_DIR

    @property
    def reports(self) -> Path:
        return self.root / REPORTS_DIR


def report_details(report: Path) -> Path:
    """The details file written beside an evaluation report."""
    return Path(report).with_suffix(REPORT_DETAILS)


def report_grid(report: Path) -> Path:
    """The picture of sample queries written beside an evaluation report."""
    return Path(report).with_suffix(REPORT_GRID)


def thumbnail_name(sha256: str) -> str:
    """Path of a thumbnail inside an index folder (content-addressed: stable across versions, cacheable)."""
    return THUMBNAIL.format(sha256=sha256)
