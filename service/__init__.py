"""Visual search query service: a Flask app factory over one index folder (local or S3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, request

from service.config import load_config

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: configuration (defaults, environment, `config`), blueprints, JSON errors, metrics, index.

    Args:
        config: overrides of the configuration, e.g. {"ARTIFACTS": "data/demo/index/current"} in tests.
    """
    from service import api, errors, events, metrics, openapi, ops, state, tracking, web
    from service.experiment import client_id_of_request
    from service.forms import SearchRequest

    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.request_class = SearchRequest
    app.config.update(load_config(config))
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(int(app.config["MAX_UPLOAD_MB"]))
    app.json.sort_keys = False
    errors.init_app(app)
    for blueprint in (api.bp, tracking.bp, web.bp, ops.bp, openapi.bp):
        app.register_blueprint(blueprint)

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        if request.path.startswith("/api/"):
            client_id_of_request()  # a malformed X-Client-Id is a 400 before any work, whatever the route

    @app.after_request
    def count(response):
        seconds = time.perf_counter() - g.get("started", 0)
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.record(endpoint, request.method, response.status_code, seconds)
        response.headers["Server-Timing"] = server_timing(g.get("stage_seconds", {}), seconds)
        return response

    state.init_app(app)
    events.init_app(app)
    return app


def max_body_bytes(max_upload_mb: int) -> int:
    """The largest request body: a photo of MAX_UPLOAD_MB as base64 text (4 characters per 3 bytes) with room for
    the JSON or form around it; the photo's own size is checked once decoded (`uploads.image_bytes`)."""
    return -(-max_upload_mb * 2**20 // 3) * 4 + 64 * 1024


def server_timing(stages: Mapping[str, float], app_seconds: float) -> str:
    """The W3C Server-Timing header: each stage of a search and `app`, the whole request inside Flask, in ms
    (a browser's developer tools chart them; the latency benchmark subtracts `app` from what the client saw)."""
    return ", ".join(f"{name};dur={1000 * seconds:.3f}" for name, seconds in {**stages, "app": app_seconds}.items())
