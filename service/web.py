"""The shopper's page and the product images (served from the index's own thumbnails)."""

from __future__ import annotations

from flask import Blueprint, current_app, request, send_file, send_from_directory

from service.errors import APIError
from service.searcher import UnknownProduct
from service.state import get_searcher

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    """The search page (plain HTML, CSS and JS; no external CDN)."""
    return send_from_directory(current_app.static_folder, "index.html")


@bp.get("/images/<path:product_id>")
def product_image(product_id: str):
    """A product's web-sized image (`?n=` picks one of its images, from 0), found through the product map: no
    request path reaches the filesystem."""
    searcher = get_searcher()
    try:
        item = searcher.product(product_id)
    except UnknownProduct:
        raise APIError(404, "unknown_product", f"no product with id {product_id!r} in this index") from None
    raw = request.args.get("n", "0")
    if not (raw.isascii() and raw.isdigit()) or int(raw) >= len(item["images"]):  # "²".isdigit() is true
        raise APIError(404, "unknown_image", f"product {product_id!r} has images n=0..{len(item['images']) - 1}, "
                                             f"not n={raw!r}")
    try:
        return send_file(searcher.image_file(item, int(raw)), mimetype="image/jpeg", max_age=86400)
    except FileNotFoundError:  # its version folder was deleted under this worker (a local `index --keep` prune)
        raise APIError(503, "image_unavailable", "the index version this worker serves was removed from disk; "
                                                 "retry in a few seconds, when it serves the current one") from None
