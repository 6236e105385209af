"""Search options and filters from a request, each checked into a 400 that says why.

The rules (docs/api.md "Parameters"):
- An option (`OPTIONS`) may come from the JSON body, a form field or the query string; the first of those three
  that has it wins.
- A filter is a query-string or form parameter named after a filterable column, or an entry of the JSON body's
  `filters` object; a value is a string or a list of strings. Every source adds to the same filters, and the values
  of one column are alternatives.
- Any other parameter is ignored and named in the answer's `ignored`: query strings collect parameters the caller
  did not write (a link's `utm_source`, a cache buster), which must not break a search, while a typo must still be
  visible to whoever reads the answer. A column named in the JSON `filters` object is explicitly a filter, so an
  unknown one there is a 400.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flask import current_app, request

from service import metrics
from service.errors import APIError

OPTIONS = ("k", "bbox", "collapse", "min_score")
IMAGE_FIELDS = ("image", "image_url", "image_base64")
RESERVED = {*OPTIONS, *IMAGE_FIELDS, "filters"}  # request fields that are never metadata filters
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
    """A request option: the JSON body's value, else the form's, else the query string's (None when absent)."""
    if name in body:
        return body[name]
    if name in request.form:
        return request.form[name]
    return request.args.get(name)


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
    """Return `min_score` (compared with each result's returned `score`, -1 to 1), None when absent; else a 400."""
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not -1 <= value <= 1:
        raise APIError(400, "bad_min_score", f"min_score must be a number from -1 to 1 (results whose score is "
                                             f"below it are dropped), e.g. min_score=0.6; got {raw!r}")
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


def parse_filters(body: dict, columns: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Collect the filters of a request (module docstring) and the parameters it ignored.

    Returns:
        (column -> accepted values, sorted names of the query, form and JSON parameters that are neither an
        option, an image nor a filterable column).
    """
    known = set(columns)
    filters: dict[str, list[str]] = {}
    ignored = {name for name in body if name not in RESERVED}
    for source in (request.args, request.form):
        for name in source:
            if name in known and name not in RESERVED:
                filters.setdefault(name, []).extend(v for v in source.getlist(name) if v != "")
            elif name not in RESERVED:
                ignored.add(name)
    extra = body.get("filters")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise APIError(400, "bad_filters", 'filters must be an object, e.g. {"category": ["Watches"]}')
    for column, values in extra.items():
        values = values if isinstance(values, list) else [values]
        if not all(isinstance(v, str) for v in values):
            raise APIError(400, "bad_filters", f"a filter value is a string or a list of strings, e.g. "
                                               f'{{"{column}": ["Red", "Blue"]}}; got {column!r}: {extra[column]!r}')
        filters.setdefault(column, []).extend(values)
    values = sum(len(v) for v in filters.values())
    most = int(current_app.config["MAX_FILTER_VALUES"])
    if values > most:
        metrics.limited("filter_values")
        raise APIError(400, "too_many_filter_values", f"{values} filter values in one request; at most {most} are "
                                                      "accepted")
    unknown = sorted(c for c in filters if c not in known)
    if unknown:
        raise APIError(400, "unknown_filter", f"unknown filter column(s) {unknown}; filterable columns: {columns}")
    return {c: v for c, v in filters.items() if v}, sorted(ignored)
