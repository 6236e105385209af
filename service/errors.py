"""JSON errors: every failure a client sees is {"error": {"status", "code", "message"}}, never an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """A client-facing error with an HTTP status and a message a person can act on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _body(status: int, code: str, message: str):  # noqa: ANN202 - a Flask response tuple
    return jsonify({"error": {"status": status, "code": code, "message": message}}), status


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into JSON."""

    @app.errorhandler(APIError)
    def api_error(exc: APIError):  # noqa: ANN202
        return _body(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # noqa: ANN202
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = (f"upload too large: the limit is {app.config['MAX_UPLOAD_MB']} MB; "
                       "send a smaller or more compressed photo")
        allowed = sorted(set(getattr(exc, "valid_methods", None) or []) - {"HEAD", "OPTIONS"})
        if exc.code == 405 and allowed:
            message = f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}"
        response, status = _body(exc.code or 500, code, message)
        if exc.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # noqa: ANN202
        log.exception("unhandled error")
        return _body(500, "internal_error", "the server failed to answer; the error is logged")
