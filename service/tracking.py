"""Query and click events (UBI schemas): what the service records of each search, and POST /api/events.

Every answered search gets a `query_id`, returned to the client; with events on (EVENTS_DIR) its UBI query record is
queued for the writer (`service.events`) and the shopper's page reports what was done with a result (a click, a
"more like this") to /api/events with that id. No photo and no address is recorded: the client id is the random id
the page keeps, and the query's vector only when EVENTS_KEEP_VECTORS says so.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Sequence

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from runtime import events
from service.errors import APIError
from service.events import get_event_log
from service.experiment import arm_of, client_id_of_request

bp = Blueprint("tracking", __name__, url_prefix="/api")
MAX_EVENTS = 50  # events in one POST /api/events
MAX_ID = 256  # characters of a query id or product id in an event
MAX_RANK = 1000
MAX_BODY = 64 * 1024


def new_query_id() -> str:
    """A random UUID for a query: returned in the answer and recorded in its events."""
    return str(uuid.uuid4())


def record_query(query_id: str, kind: str, arm: str, version: str, product_ids: Sequence[str],
                 scores: Sequence[float], options: dict, timings_ms: dict, user_query: str = "",
                 vector: np.ndarray | None = None) -> None:
    """Queue the UBI query record of one answered search (nothing when events are off; never waits).

    Args:
        query_id: the id returned in the answer.
        kind: one of `runtime.events.QUERY_KINDS`.
        arm: the A/B arm that served it ("A" without a test).
        version: the index version that answered.
        product_ids, scores: the ranked results as the answer gave them.
        options: k, filters, collapse, min_score, bbox: what the client asked for.
        timings_ms: the answer's timings.
        user_query: the query as text (a "more like this" query's product id; "" for a photo).
        vector: the query's embedding, kept (float16, base64) only with EVENTS_KEEP_VECTORS.
    """
    log = get_event_log()
    if log is None:
        return
    config = current_app.config
    attributes = {"kind": kind, **options, "scores": list(scores), "index_version": version, "arm": arm,
                  "experiment": config["AB_NAME"] if config["AB_ARTIFACTS"] else None, "timings_ms": timings_ms}
    if vector is not None and config["EVENTS_KEEP_VECTORS"]:
        attributes["vector_f16"] = base64.b64encode(np.asarray(vector, np.float16).tobytes()).decode()
    log.emit(events.QUERIES, {
        "application": events.APPLICATION, "query_id": query_id, "client_id": client_id_of_request(),
        "timestamp": time.time(), "user_query": user_query, "object_id_field": events.OBJECT_ID_FIELD,
        "query_response_id": query_id, "query_response_hit_ids": list(product_ids), "query_attributes": attributes})


def _text(value: object, name: str, limit: int = MAX_ID) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise APIError(400, "bad_event", f"{name} must be a string of 1 to {limit} characters")
    return value


def parse_event(raw: object, header_client: str | None) -> dict:
    """Check one event as the page or an integrator sends it (UBI's event shape) and return the record to store.

    Raises:
        APIError: 400 bad_event naming the field that is missing or wrong.
    """
    if not isinstance(raw, dict):
        raise APIError(400, "bad_event", "each event must be a JSON object")
    action = raw.get("action_name")
    if action not in events.ACTIONS:
        raise APIError(400, "bad_event", f"action_name must be one of {', '.join(events.ACTIONS)}, got {action!r}")
    query_id = _text(raw.get("query_id"), "query_id", 64)
    client = raw.get("client_id", header_client)
    if client is not None and not (isinstance(client, str) and events.CLIENT_ID.fullmatch(client)):
        raise APIError(400, "bad_event", "client_id must be 1 to 64 letters, digits or ._:- (the id sent as "
                                         "X-Client-Id with the search)")
    attributes = raw.get("event_attributes")
    if not isinstance(attributes, dict) or not isinstance(attributes.get("object"), dict):
        raise APIError(400, "bad_event", "event_attributes.object.object_id must name the product acted on, e.g. "
                                         "{\"object\": {\"object_id\": \"1163\"}, \"position\": {\"ordinal\": 2}}")
    object_id = _text(attributes["object"].get("object_id"), "event_attributes.object.object_id")
    position = attributes.get("position")
    ordinal = position.get("ordinal") if isinstance(position, dict) else None
    if isinstance(ordinal, bool) or not isinstance(ordinal, int) or not 1 <= ordinal <= MAX_RANK:
        raise APIError(400, "bad_event", f"event_attributes.position.ordinal must be the result's rank, 1 to "
                                         f"{MAX_RANK}")
    config = current_app.config
    arm = arm_of(client, config["AB_NAME"], float(config["AB_SHARE"])) if config["AB_ARTIFACTS"] else "A"
    return {"application": events.APPLICATION, "action_name": action, "query_id": query_id, "client_id": client,
            "timestamp": time.time(), "message_type": "INFO", "message": None,
            "event_attributes": {"object": {"object_id": object_id, "object_id_field": events.OBJECT_ID_FIELD},
                                 "position": {"ordinal": ordinal}, "arm": arm}}


@bp.post("/events")
def post_events():
    """Record what a shopper did with a result: one UBI event object, or a list of up to MAX_EVENTS."""
    if (request.content_length or 0) > MAX_BODY:
        raise APIError(413, "too_large", f"an events request is at most {MAX_BODY // 1024} KB")
    try:  # any content type: navigator.sendBeacon may send its JSON as text/plain
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError):
        raise APIError(400, "malformed_json", "the request body is not valid JSON") from None
    batch = body if isinstance(body, list) else [body]
    if not 1 <= len(batch) <= MAX_EVENTS:
        raise APIError(400, "bad_event", f"send 1 to {MAX_EVENTS} events in one request")
    header_client = client_id_of_request()
    records = [parse_event(raw, header_client) for raw in batch]
    log = get_event_log()
    accepted = sum(log.emit(events.EVENTS, record) for record in records) if log is not None else 0
    return jsonify({"accepted": accepted, "recorded": log is not None}), 202
