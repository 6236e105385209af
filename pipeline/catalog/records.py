"""What a catalog source yields: one record per image, the rows it rejects, and the error for a source that cannot be
read at all."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.common.errors import StageError


class SourceError(StageError):
    """A source that cannot be read at all (as opposed to one bad row in it)."""


@dataclass
class Record:
    """One image of a product, as a source gives it: where the image is and what is known about the product."""

    product_id: str
    name: str
    category: str
    image: str  # a local path, an http(s) URL or an s3:// URI
    metadata: dict[str, str] = field(default_factory=dict)
    where: str = ""  # the file or CSV line it came from (for conflict reports)


@dataclass
class Reject:
    """One input row that cannot become a product, with the reason."""

    product_id: str
    source: str
    reason: str
    source_sha256: str = ""  # the refused image's bytes, when they were read: a rerun refuses them unchanged unread
