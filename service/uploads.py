"""Turn a search request's image (multipart file, image_url or image_base64) into RGB pixels, or a 4xx APIError."""

from __future__ import annotations

import base64
import binascii

from flask import Request

from runtime import imaging
from runtime.fetch import FetchError, fetch_url
from service import limits, metrics
from service.errors import TOO_LARGE, APIError, too_large_message
from service.params import Box

STATUS_BY_KIND = {"empty": 400, "format": 415, "corrupt": 400, "pixels": 413, "dimensions": 422}
# how each reason an image_url gave no image is answered: a malformed or private URL is the caller's to change, the
# rest is the remote server's
FETCH_ERRORS = {"bad_url": (400, "bad_image_url"), "private_address": (400, "bad_image_url"),
                "unresolved": (400, "url_unreachable"), "unreachable": (400, "url_unreachable"),
                "timeout": (400, "url_unreachable"), "http_status": (400, "url_unreachable"),
                "too_large": (413, TOO_LARGE)}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, TIFF" + (" and HEIC" if imaging.HEIF else "")
HINT = "send a photo as a multipart 'image' file, or JSON {\"image_url\": ...} or {\"image_base64\": ...}"


def request_json(request: Request) -> dict:
    """Return the JSON body as a dict ({} when the request is not JSON); malformed JSON is a 400."""
    if not request.is_json:
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # Python's JSON decoder recurses once per nesting level
        raise APIError(400, "malformed_json", "the JSON body is nested too deeply") from None
    if body is None:
        raise APIError(400, "malformed_json", "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise APIError(400, "malformed_json", "the JSON body must be an object, e.g. {\"image_url\": \"https://...\"}")
    return body


def image_bytes(request: Request, body: dict, config: dict) -> bytes:
    """Return the raw bytes of the query image, whichever way it was sent."""
    limit = int(config["MAX_UPLOAD_MB"]) * 2**20
    if "image" in request.files:
        data = request.files["image"].read(limit + 1)
    elif body.get("image_base64") is not None:
        encoded = body["image_base64"]
        if not isinstance(encoded, str):
            raise APIError(400, "bad_image_base64", "image_base64 must be a string of base64 text")
        encoded = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "bad_image_base64", "image_base64 is not valid base64") from None
    elif body.get("image_url") is not None:
        data = fetch_image(body["image_url"], limit, config)
    elif request.files:
        raise APIError(400, "no_image", f"the multipart form has no field named 'image' ({HINT})")
    else:
        raise APIError(400, "no_image", f"no image in the request: {HINT}")
    if len(data) > limit:
        raise APIError(413, TOO_LARGE, too_large_message(config))
    return data


def fetch_image(url: object, limit: int, config: dict) -> bytes:
    """Download an `image_url` within URL_TIMEOUT_S (`runtime.fetch.fetch_url`), or a 4xx APIError saying why not."""
    try:
        with limits.url_fetch_slot(config):
            return fetch_url(url, limit, float(config["URL_TIMEOUT_S"]), bool(config["ALLOW_PRIVATE_URLS"]),
                             name="image_url").data
    except FetchError as exc:
        status, code = FETCH_ERRORS[exc.reason]
        raise APIError(status, code, str(exc)) from None


def decode(data: bytes, config: dict, size: int, box: Box | None = None) -> imaging.ModelPixels:
    """Decode and check an image at the size the model takes (`imaging.model_pixels`), cutting `box` if given.

    Raises:
        APIError: a 4xx naming what is wrong with the image, or 422 when the box is narrower or shorter than
            MIN_CROP_PX pixels of the photo.
    """
    try:
        if box is not None:
            width, height = imaging.upright_size(data, int(config["MAX_PIXELS"]))
            left, top, right, bottom = imaging.box_pixels(box, width, height)
            min_side = int(config["MIN_CROP_PX"])
            if min(right - left, bottom - top) < min_side:
                raise APIError(422, "crop_too_small", f"the box covers {right - left}x{bottom - top} pixels of the "
                                                      f"{width}x{height} photo; each side must be at least "
                                                      f"{min_side} pixels: draw a larger box or send a larger photo")
        return imaging.model_pixels(data, size, box, max_pixels=int(config["MAX_PIXELS"]), min_side=8,
                                    max_decoded=int(config["MAX_DECODED_PIXELS"]))
    except imaging.ImageRejected as exc:
        if exc.kind == "pixels":
            metrics.limited("decoded_pixels")
        hint = f" ({ACCEPTED} are accepted)" if exc.kind == "format" else ""
        raise APIError(STATUS_BY_KIND.get(exc.kind, 400), f"image_{exc.kind}", f"{exc}{hint}") from None
