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
