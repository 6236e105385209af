"""Search options from a request (query string, form fields or JSON body), each checked into a 400 that says why."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flask import current_app, request

from service.errors import APIError

# Request fields that are options, not metadata filters.
RESERVED = {"k", "image", "image_url", "image_base64", "filters", "bbox", "collapse", "min_score"}
BBOX_FORMAT = ("bbox must be four fractions of the photo, left,top,right,bottom, each from 0 to 1 with left < right "
               "and top < bottom: bbox=0.1,0.2,0.6,0.9 (query or form) or \"bbox\": [0.1, 0.2, 0.6, 0.9] (JSON)")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class Box(NamedTuple):
    """A crop box in fractions of the (upright) photo: left, top, right, bottom."""

    left: float
    top: float
    right: float
    bottom: float


def option(body: dict, name: str) -> Any:
    """A request option: the JSON body's value, else the query string's or form's (None when absent)."""
    if name in body:
        return body[name]
    return request.values.get(name)


def parse_k(raw: object) -> int:
    """Return k from a request value, or a 400 naming the allowed range."""
    max_k = int(current_app.config["MAX_K"])
    if raw is None or raw == "":
        return int(current_app.config["DEFAULT_K"])
    try:
        k = int(raw)
        if isinstance(raw, float | bool) or str(raw).strip() != str(k):
            raise ValueError
    except (TypeError, ValueError):
        raise APIError(400, "bad_k", f"k must be a whole number from 1 to {max_k}, got {raw!r}") from None
    if not 1 <= k <= max_k:
        raise APIError(400, "bad_k", f"k must be from 1 to {max_k}, got {k}")
    return k


def parse_bbox(raw: object) -> Box | None:
    """Return the crop box of `bbox` ("x0,y0,x1,y1" or a list of four numbers), None when absent; else a 400."""
    if raw is None or raw == "":
        return None
    parts = raw.split(",") if isinstance(raw, str) else raw
    try:
        if not isinstance(parts, list | tuple) or len(parts) != 4 or any(isinstance(v, bool) for v in parts):
            raise ValueError
        box = Box(*(float(v) for v in parts))
    except (TypeError, ValueError):
        raise APIError(400, "bad_bbox", f"{BBOX_FORMAT}; got {raw!r}") from None
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in box) or box.left >= box.right or box.top >= box.bottom:
        raise APIError(400, "bad_bbox", f"{BBOX_FORMAT}; got {raw!r}")
    return box


def parse_min_score(raw: object) -> float | None:
    """Return `min_score` (a cosine similarity, -1 to 1), None when absent; else a 400."""
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not -1 <= value <= 1:
        raise APIError(400, "bad_min_score", f"min_score must be a similarity from -1 to 1 (results below it are "
                                             f"dropped), e.g. min_score=0.6; got {raw!r}")
    return value


def parse_flag(raw: object, name: str) -> bool:
    """Return a true/false option (absent: false); else a 400."""
    if isinstance(raw, bool):
        return raw
    if raw is None or str(raw).strip().lower() in FALSE:
        return False
    if str(raw).strip().lower() in TRUE:
        return True
    raise APIError(400, f"bad_{name}", f"{name} must be true or false, got {raw!r}")


def parse_filters(body: dict, columns: list[str]) -> dict[str, list[str]]:
    """Collect filters from the query string, form fields and JSON {"filters": {column: value or [values]}}."""
    filters: dict[str, list[str]] = {}
    for source in (request.args, request.form):
        for column in source:
            if column not in RESERVED:
                filters.setdefault(column, []).extend(v for v in source.getlist(column) if v != "")
    extra = body.get("filters", {})
    if not isinstance(extra, dict):
        raise APIError(400, "bad_filters", 'filters must be an object, e.g. {"category": ["Watches"]}')
    for column, values in extra.items():
        values = values if isinstance(values, list) else [values]
        filters.setdefault(column, []).extend(str(v) for v in values)
    unknown = sorted(c for c in filters if c not in columns)
    if unknown:
        raise APIError(400, "unknown_filter", f"unknown filter column(s) {unknown}; filterable columns: {columns}")
    return {c: v for c, v in filters.items() if v}
