"""JSON API: image search, product lookup, "more like this", and the filter values the web page offers."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request, url_for

from service import metrics
from service.errors import APIError
from service.searcher import Match, Searcher, UnknownProduct
from service.state import get_searcher
from service.uploads import decode, image_bytes, request_json

bp = Blueprint("api", __name__, url_prefix="/api")
RESERVED = {"k", "image", "image_url", "image_base64", "filters"}


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


def parse_filters(body: dict, searcher: Searcher) -> dict[str, list[str]]:
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
    unknown = sorted(c for c in filters if c not in searcher.columns)
    if unknown:
        raise APIError(400, "unknown_filter", f"unknown filter column(s) {unknown}; filterable columns: "
                                              f"{searcher.columns}")
    return {c: v for c, v in filters.items() if v}


def image_url(item: dict, position: int = 0) -> str:
    """The URL of one of a product's web-sized images: IMAGE_BASE_URL when set, else this service's /images/."""
    base = current_app.config["IMAGE_BASE_URL"]
    if base:
        return f"{base.rstrip('/')}/{item['images'][position]['thumbnail']}"
    if position:
        return url_for("web.product_image", product_id=item["product_id"], n=position)
    return url_for("web.product_image", product_id=item["product_id"])


def product_json(item: dict, matched: int = 0) -> dict:
    """A product as the API shows it: `image_url` is its matched (else first) image, `images` all of them."""
    return {"product_id": item["product_id"], "name": item["name"], "category": item["category"],
            "metadata": item["metadata"], "image_url": image_url(item, matched),
            "images": [image_url(item, n) for n in range(len(item["images"]))]}


def results_json(results: list[Match]) -> list[dict]:
    """Ranked products: rank, product fields, score, and which of its images matched best (its index in `images`)."""
    return [{"rank": rank, **product_json(m.item, m.image), "matched_image": m.image, "score": round(m.score, 5)}
            for rank, m in enumerate(results, start=1)]


@bp.post("/search")
def search():  # noqa: ANN201
    """Find the products most similar to an uploaded photo (optionally filtered on metadata)."""
    started = time.perf_counter()
    body = request_json(request)
    searcher = get_searcher()
    k = parse_k(body.get("k", request.values.get("k")))
    filters = parse_filters(body, searcher)
    data = image_bytes(request, body, current_app.config)
    pixels = decode(data, current_app.config)
    decoded = time.perf_counter()
    vector = searcher.embed(pixels)
    embedded = time.perf_counter()
    results = searcher.search(vector, k, filters)
    done = time.perf_counter()
    for stage, seconds in (("decode", decoded - started), ("embed", embedded - decoded), ("search", done - embedded)):
        metrics.stage(stage, seconds)
    return jsonify({"results": results_json(results), "k": k, "filters": filters, "version": searcher.version,
                    "timings_ms": {"decode": round(1000 * (decoded - started), 2),
                                   "embed": round(1000 * (embedded - decoded), 2),
                                   "search": round(1000 * (done - embedded), 2)}})


@bp.get("/products/<path:product_id>")
def product(product_id: str):  # noqa: ANN201
    """Return one product."""
    try:
        return jsonify(product_json(get_searcher().product(product_id)))
    except UnknownProduct:
        raise APIError(404, "unknown_product", f"no product with id {product_id!r} in this index") from None


@bp.get("/products/<path:product_id>/similar")
def similar(product_id: str):  # noqa: ANN201
    """Return the products most similar to a catalog product ("more like this"), by its stored vector."""
    started = time.perf_counter()
    searcher = get_searcher()
    k = parse_k(request.args.get("k"))
    filters = parse_filters({}, searcher)
    try:
        results = searcher.similar(product_id, k, filters)
    except UnknownProduct:
        raise APIError(404, "unknown_product", f"no product with id {product_id!r} in this index") from None
    return jsonify({"product": product_json(searcher.product(product_id)), "results": results_json(results),
                    "k": k, "filters": filters, "version": searcher.version,
                    "timings_ms": {"search": round(1000 * (time.perf_counter() - started), 2)}})


@bp.get("/filters")
def filters():  # noqa: ANN201
    """Return the filterable columns, with value counts for those with few distinct values."""
    searcher = get_searcher()
    return jsonify({"columns": searcher.columns, "facets": searcher.facets, "count": len(searcher.items)})
