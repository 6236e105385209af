"""JSON errors: every failure a client sees is {"error": {"status", "code", "message"}}, never an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)
# A refused upload is read (and dropped) up to this many bytes before the 413 is sent: a client that sends its
# whole body before reading (Python's urllib) would otherwise meet a closed connection instead of the answer.
DRAIN_LIMIT = 64 * 2**20
DRAIN_CHUNK = 256 * 1024


# Every error `code` a client can meet, with its meaning: the contract integrators switch on.
ERROR_CODES: dict[str, str] = {
    "no_image": "the request carries no image (multipart `image`, `image_url` or `image_base64`)",
    "image_empty": "the image is empty",
    "image_corrupt": "the image is truncated or damaged",
    "image_format": "not an image, or a format that is not accepted (JPEG, PNG, WebP, GIF, BMP, TIFF and HEIC are)",
    "image_pixels": "the photo has more than MAX_PIXELS pixels, or would decode to more than MAX_DECODED_PIXELS",
    "image_dimensions": "the image is too small or of an absurd shape",
    "too_large": "the image (or the request body) is over MAX_UPLOAD_MB",
    "malformed_json": "the body is not JSON, not an object, or nested too deeply",
    "bad_image_base64": "image_base64 is not a string of base64",
    "bad_image_url": "image_url is not an http(s) URL, or points to a private address",
    "url_unreachable": "image_url could not be fetched within URL_TIMEOUT_S, or answered an HTTP error",
    "bad_k": "k is not a whole number in range",
    "bad_bbox": "bbox is not four fractions left < right, top < bottom",
    "crop_too_small": "the bbox covers fewer than MIN_CROP_PX pixels a side",
    "bad_min_score": "min_score is not a number from -1 to 1",
    "bad_collapse": "collapse is not true or false",
    "bad_filters": "filters is not an object of strings or lists of strings",
    "unknown_filter": "the JSON filters object names a column that is not filterable",
    "too_many_filter_values": "more than MAX_FILTER_VALUES filter values in one request",
    "rate_limited": "this address sent more requests a second than nginx's limit_req allows (.platform)",
    "url_fetch_busy": "this worker already downloads MAX_URL_FETCHES image_url photos: retry after Retry-After "
                      "seconds, or upload the photo",
    "bad_client_id": "X-Client-Id is not 1 to 64 letters, digits or ._:-",
    "bad_event": "an event for /api/events lacks a field or has a wrong one (the message names it)",
    "no_duplicate_groups": "collapse on an index built without near-duplicate groups",
    "unknown_product": "no product with this id in the served index",
    "unknown_image": "the product has no image with this number",
    "image_unavailable": "the image's index version was removed under this worker; retry",
    "not_ready": "the worker has no index loaded yet; retry",
    "load_failed": "the worker could not load its index (/health only)",
    "reload_disabled": "ADMIN_TOKEN is not set",
    "unauthorized": "no bearer token",
    "forbidden": "wrong admin token",
    "bad_parameter": "a reload body that is not {\"version\": name}",
    "unknown_version": "no such version beside the pointer",
    "reload_failed": "the version named could not be loaded; the old one keeps serving",
    "reload_forbidden": "S3 denies this instance the write of the pointer; the message names the permission",
    "storage_unavailable": "S3 did not answer; nothing changed: try again",
    "not_found": "no such route or file",
    "method_not_allowed": "the route does not take this method (the Allow header lists those it does)",
    "bad_request": "a request the HTTP layer refused (e.g. a malformed form body)",
    "internal_error": "a failure of the server, logged; never expected",
}

TOO_LARGE = "too_large"  # the one code of a photo (or body) over MAX_UPLOAD_MB, however it was sent


def too_large_message(config: dict) -> str:
    """The message of a photo over MAX_UPLOAD_MB."""
    return (f"upload too large: the limit is {config['MAX_UPLOAD_MB']} MB of image; send a smaller or more "
            "compressed photo")


class APIError(Exception):
    """A client-facing error with an HTTP status and a message a person can act on."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def _body(status: int, code: str, message: str):
    return jsonify({"error": {"status": status, "code": code, "message": message}}), status


def drain_body(environ: dict, limit: int = DRAIN_LIMIT) -> int:
    """Read and drop what is left of the request body, up to `limit` bytes; return how many were read."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    if stream is None or (length and length.isdigit() and int(length) > limit):
        return 0  # larger than any photo: not worth the bandwidth; the connection is closed instead
    read = 0
    try:
        while read < limit:
            chunk = stream.read(min(DRAIN_CHUNK, limit - read))
            if not chunk:
                break
            read += len(chunk)
    except (OSError, ValueError):  # the client went away
        pass
    return read


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into JSON."""

    @app.errorhandler(APIError)
    def api_error(exc: APIError):
        response, status = _body(exc.status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:  # one code with uploads.image_bytes's; Werkzeug's stock text means MAX_CONTENT_LENGTH
            default = isinstance(exc, RequestEntityTooLarge) and exc.description == RequestEntityTooLarge.description
            code, message = TOO_LARGE, too_large_message(app.config) if default else message
            drain_body(request.environ)
        allowed = sorted(set(getattr(exc, "valid_methods", None) or []) - {"HEAD", "OPTIONS"})
        if exc.code == 405 and allowed:
            message = f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}"
        response, status = _body(exc.code or 500, code, message)
        if exc.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return _body(500, "internal_error", "the server failed to answer; the error is logged")
