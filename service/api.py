"""JSON API: image search, product lookup, "more like this", and the filter values the web page offers."""

from __future__ import annotations

import time
from urllib.parse import quote

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request, url_for

from service import metrics
from service.errors import APIError
from service.params import option, parse_bbox, parse_filters, parse_flag, parse_k, parse_min_score
from service.searcher import SCORE_DECIMALS, Match, NoDuplicateGroups, Searcher, UnknownProduct
from service.state import get_searcher, serving
from service.tracking import new_query_id, record_query
from service.uploads import decode, image_bytes, request_json

bp = Blueprint("api", __name__, url_prefix="/api")
IMAGE_PATH_SAFE = "!$&'()*+,/:;=@"  # what Werkzeug's path converter leaves unquoted (url_for's own quoting)


def image_urls(item: dict) -> list[str]:
    """The URLs of a product's web-sized images, in order: under IMAGE_BASE_URL when set, else this service's
    /images/ (`?n=` for all but the first)."""
    base = current_app.config["IMAGE_BASE_URL"]
    if base:
        return [f"{base.rstrip('/')}/{image['thumbnail']}" for image in item["images"]]
    prefix = g.get("image_prefix")
    if prefix is None:  # url_for costs ~35 us a call, twice per result: build the route's prefix once a request
        prefix = g.image_prefix = url_for("web.product_image", product_id="-")[:-1]
    url = prefix + quote(str(item["product_id"]), safe=IMAGE_PATH_SAFE)
    return [url] + [f"{url}?n={position}" for position in range(1, len(item["images"]))]


def product_json(item: dict, matched: int = 0) -> dict:
    """A product as the API shows it: `image_url` is its matched (else first) image, `images` all of them."""
    urls = image_urls(item)
    return {"product_id": item["product_id"], "name": item["name"], "category": item["category"],
            "metadata": item["metadata"], "image_url": urls[matched], "images": urls}


def results_json(results: list[Match]) -> list[dict]:
    """Ranked products: rank, product fields, score, and which of its images matched best (its index in `images`)."""
    return [{"rank": rank, **product_json(m.item, m.image), "matched_image": m.image, "score": shown_score(m.score)}
            for rank, m in enumerate(results, start=1)]


def shown_score(score: float) -> float:
    """A result's score as the answer gives it (and as `min_score` is compared with it)."""
    return round(score, SCORE_DECIMALS)


def ranked(searcher: Searcher, k: int, filters: dict, body: dict, vector: np.ndarray | None = None,
           like: str | None = None) -> tuple[list[Match], dict]:
    """Search by a query vector, or for products like the product `like`, with the request's `collapse` and
    `min_score`; return the results and those two options."""
    collapse = parse_flag(option(body, "collapse"), "collapse")
    min_score = parse_min_score(option(body, "min_score"))
    widest = int(current_app.config["MAX_COLLAPSE_FETCH"])
    try:
        if like is None:
            results = searcher.search(vector, k, filters, collapse=collapse, min_score=min_score, max_fetch=widest)
        else:
            results = searcher.similar(like, k, filters, collapse=collapse, min_score=min_score, max_fetch=widest)
    except NoDuplicateGroups:
        raise APIError(409, "no_duplicate_groups", "collapse=true needs the near-duplicate groups that `python -m "
                                                   "pipeline index` stores in the index; this one was built "
                                                   "without them: rebuild it") from None
    return results, {"collapse": collapse, "min_score": min_score}


@bp.post("/search")
def search():
    """Find the products most similar to an uploaded photo, or to a box of it (optionally filtered on metadata)."""
    started = time.perf_counter()
    body = request_json(request)
    arm, searcher = serving()
    k = parse_k(option(body, "k"))
    filters, ignored = parse_filters(body, searcher.columns)
    box = parse_bbox(option(body, "bbox"))
    data = image_bytes(request, body, current_app.config)
    parsed = time.perf_counter()
    prepared = decode(data, current_app.config, searcher.input_size, box)
    cropped = None if box is None else {"bbox": list(box), "pixels": prepared.box,
                                        "size": [prepared.box[2] - prepared.box[0], prepared.box[3] - prepared.box[1]]}
    decoded = time.perf_counter()
    vector = searcher.embed(prepared.pixels)
    embedded = time.perf_counter()
    results, options = ranked(searcher, k, filters, body, vector=vector)
    done = time.perf_counter()
    timings = {"parse": parsed - started, "decode": decoded - parsed, "embed": embedded - decoded,
               "search": done - embedded}
    for stage, seconds in timings.items():
        metrics.stage(stage, seconds)
    g.stage_seconds = timings  # the Server-Timing header (service/__init__.py)
    query_id = new_query_id()
    shown = results_json(results)
    timings_ms = {stage: round(1000 * seconds, 2) for stage, seconds in timings.items()}
    from_url = "image" not in request.files and body.get("image_base64") is None  # image_bytes' order
    kind = "crop" if box is not None else "url" if from_url and body.get("image_url") is not None else "upload"
    record_query(query_id, kind, arm, searcher.version, [r["product_id"] for r in shown], [r["score"] for r in shown],
                 {"k": k, "filters": filters, **options, "bbox": None if box is None else list(box)}, timings_ms,
                 vector=vector)
    return jsonify({"query_id": query_id, "results": shown, "k": k, "filters": filters, **options, "crop": cropped,
                    "ignored": ignored, "version": searcher.version, "timings_ms": timings_ms})


@bp.get("/products/<path:product_id>")
def product(product_id: str):
    """Return one product."""
    try:
        return jsonify(product_json(get_searcher().product(product_id)))
    except UnknownProduct:
        raise APIError(404, "unknown_product", f"no product with id {product_id!r} in this index") from None


@bp.get("/products/<path:product_id>/similar")
def similar(product_id: str):
    """Return the products most similar to a catalog product ("more like this"), by its stored vector."""
    started = time.perf_counter()
    arm, searcher = serving()
    k = parse_k(request.args.get("k"))
    filters, ignored = parse_filters({}, searcher.columns)
    try:
        results, options = ranked(searcher, k, filters, {}, like=product_id)
    except UnknownProduct:
        raise APIError(404, "unknown_product", f"no product with id {product_id!r} in this index") from None
    timings_ms = {"search": round(1000 * (time.perf_counter() - started), 2)}
    query_id = new_query_id()
    shown = results_json(results)
    record_query(query_id, "similar", arm, searcher.version, [r["product_id"] for r in shown],
                 [r["score"] for r in shown], {"k": k, "filters": filters, **options, "bbox": None}, timings_ms,
                 user_query=product_id)
    return jsonify({"query_id": query_id, "product": product_json(searcher.product(product_id)), "results": shown,
                    "k": k, "filters": filters, **options, "ignored": ignored, "version": searcher.version,
                    "timings_ms": timings_ms})


@bp.get("/filters")
def filters():
    """Return the filterable columns, with value counts for those with few distinct values, and whether results
    can be collapsed to one per near-duplicate group."""
    searcher = get_searcher()
    return jsonify({"columns": searcher.columns, "facets": searcher.facets, "count": searcher.count,
                    "collapse": searcher.groups is not None})
