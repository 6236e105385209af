"""The `data/` folder layout: the only contract between stages (documented in data/README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths of every stage's outputs under one data directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def catalog_csv(self) -> Path:
        return self.catalog / "catalog.csv"

    @property
    def rejects_csv(self) -> Path:
        return self.catalog / "rejects.csv"

    @property
    def queries_csv(self) -> Path:
        return self.catalog / "queries.csv"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def features(self, fingerprint: str) -> Path:
        """The backbone-feature cache of one encoder (its name and weights make the fingerprint)."""
        return self.cache / "features" / fingerprint

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def extractor(self) -> Path:
        return self.model / "extractor"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def current_index(self) -> Path:
        return self.index / "current"

    @property
    def eval(self) -> Path:
        return self.root / "eval"


def read_catalog(path: Path):  # noqa: ANN201 - pandas is imported lazily
    """Read a catalog CSV with every column as text (product ids such as 00123 stay as written)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_catalog(layout: Layout):  # noqa: ANN201 - pandas is imported lazily
    """Read the acquired catalog, with a clear error when acquire has not run or accepted nothing."""
    if not layout.catalog_csv.is_file():
        raise FileNotFoundError(f"no catalog at {layout.catalog_csv}; run `python -m pipeline acquire` first")
    catalog = read_catalog(layout.catalog_csv)
    if catalog.empty:
        raise ValueError(f"{layout.catalog_csv} has no products: every row was rejected (see rejects.csv)")
    return catalog
