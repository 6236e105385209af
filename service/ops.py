"""Operations: health (for the load balancer), Prometheus metrics, and the admin reload."""

from __future__ import annotations

import hmac
import logging
import os

from flask import Blueprint, Response, current_app, jsonify, request

from service import metrics as prometheus
from service.errors import APIError
from service.state import get_holder
from service.uploads import request_json

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():  # noqa: ANN201
    """200 once the index and model are loaded and warmed up, with what is served; 503 before."""
    holder = get_holder()
    searcher = holder.searcher
    if searcher is None:
        body = {"status": "error" if holder.error else "loading", "message": holder.error or "loading the index"}
        return jsonify(body), 503
    return jsonify({"status": "ok", "version": searcher.version, "items": searcher.count,
                    "encoder": searcher.manifest["encoder"], "dim": searcher.manifest["dim"],
                    "worker": os.getpid(), "loaded_at": round(holder.loaded_at, 3),
                    "load_seconds": round(holder.load_seconds, 3), "refused": holder.refused})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, summed over every gunicorn worker."""
    body, content_type = prometheus.render()
    return Response(body, content_type=content_type)


@bp.post("/api/admin/reload")
def reload():  # noqa: ANN201
    """Load new artifacts (JSON {"artifacts": location}, default: the configured ARTIFACTS) and swap them in."""
    token = current_app.config["ADMIN_TOKEN"]
    if not token:
        raise APIError(403, "reload_disabled", "reload is disabled: set ADMIN_TOKEN in the environment to enable it")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        raise APIError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
        raise APIError(403, "forbidden", "wrong admin token")
    location = request_json(request).get("artifacts") or current_app.config["ARTIFACTS"]
    holder = get_holder()
    old = holder.searcher.version if holder.searcher else None
    try:
        searcher = holder.load(location)
    except Exception as exc:  # noqa: BLE001 - the old index keeps serving; the caller learns why
        log.exception("reload of %s failed", location)
        raise APIError(422, "reload_failed", f"could not load {location}: {exc}; still serving {old}") from None
    current_app.config["ARTIFACTS"] = location
    holder.announce(location)
    return jsonify({"status": "reloaded", "previous_version": old, "version": searcher.version,
                    "items": searcher.count})
