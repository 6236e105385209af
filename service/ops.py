"""Operations: health (for the load balancer), Prometheus metrics, and the admin reload."""

from __future__ import annotations

import hmac
import logging
import os

from flask import Blueprint, Response, current_app, jsonify, request

from runtime import storage
from runtime.artifacts import ArtifactError
from service import metrics as prometheus
from service.errors import APIError
from service.state import get_holder, get_treatment_holder, move_pointer
from service.uploads import request_json

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    """200 once the index and model are loaded and warmed up, with the version served; 503 before, saying only
    "not ready". With the admin token (`Authorization: Bearer ADMIN_TOKEN`) it also says why and from where:
    the encoder, the worker, load times, a refused version, the error being retried."""
    holder = get_holder()
    searcher = holder.searcher
    details = is_admin(request.headers.get("Authorization", ""))
    if searcher is None:
        failed = holder.error is not None
        error = {"status": 503, "code": "not_ready", "message": "not ready: no index is loaded yet"}
        if details:
            error.update(code="load_failed" if failed else "not_ready",
                         message=holder.error if failed else "loading the index; retry in a few seconds")
        response = jsonify({"status": "error" if failed else "loading", "error": error})
        response.headers["Retry-After"] = "5"
        return response, 503
    body = {"status": "ok", "version": searcher.version, "items": searcher.count}
    if details:
        body.update({"encoder": searcher.manifest["encoder"], "dim": searcher.manifest["dim"], "worker": os.getpid(),
                     "loaded_at": round(holder.loaded_at, 3), "load_seconds": round(holder.load_seconds, 3),
                     "refused": holder.refused, "retrying": holder.transient})
        treatment = get_treatment_holder()
        if treatment is not None:
            config = current_app.config
            body["ab"] = {"name": config["AB_NAME"], "share": float(config["AB_SHARE"]),
                          "artifacts": treatment.location,
                          "version": treatment.searcher.version if treatment.searcher else None,
                          "error": treatment.error or treatment.transient}
    return jsonify(body)


def is_admin(authorization: str) -> bool:
    """Whether an Authorization header carries ADMIN_TOKEN (never, while no token is set)."""
    token = current_app.config["ADMIN_TOKEN"]
    return bool(token) and authorization.startswith("Bearer ") and hmac.compare_digest(
        authorization.removeprefix("Bearer ").encode(), token.encode())


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, summed over every gunicorn worker."""
    body, content_type = prometheus.render()
    return Response(body, content_type=content_type)


@bp.post("/api/admin/reload")
def reload():
    """Move ARTIFACTS' pointer to another of its versions (JSON {"version": name}) or, without one, check it now,
    and load what it names; every other worker and instance follows the pointer within RELOAD_CHECK_S."""
    token = current_app.config["ADMIN_TOKEN"]
    if not token:
        raise APIError(403, "reload_disabled", "reload is disabled: set ADMIN_TOKEN in the environment to enable it")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        raise APIError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
        raise APIError(403, "forbidden", "wrong admin token")
    body = request_json(request)
    if "artifacts" in body:
        raise APIError(400, "bad_parameter", "a reload follows ARTIFACTS' pointer (CURRENT on S3, index/current "
                                             "locally): name one of its versions with {\"version\": ...}, or "
                                             "publish another with `deploy --artifacts-only`")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise APIError(400, "bad_parameter", "version must be a version folder's name")
    holder = get_holder()
    old = holder.searcher.version if holder.searcher else None
    if version is not None:
        try:
            move_pointer(holder.location, version)
        except ArtifactError as exc:
            raise APIError(404, "unknown_version", f"{exc}; still serving {old}") from None
        except PermissionError as exc:
            raise APIError(403, "reload_forbidden", f"{exc}; still serving {old}") from None
        except Exception as exc:
            if not storage.is_transient(exc):
                raise
            log.warning("reload: S3 did not answer moving the pointer of %s: %s", holder.location, exc)
            raise APIError(503, "storage_unavailable", f"S3 did not answer ({type(exc).__name__}: {exc}); the "
                                                       f"pointer did not move, still serving {old}: try again"
                           ) from None
    try:
        searcher = holder.reload()
    except Exception as exc:
        log.exception("reload of %s failed", holder.location)
        raise APIError(422, "reload_failed", f"could not load what {holder.location} names: {exc}; still serving "
                                             f"{old}") from None
    return jsonify({"status": "reloaded", "previous_version": old, "version": searcher.version,
                    "items": searcher.count})
