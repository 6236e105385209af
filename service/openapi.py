"""The API as an OpenAPI 3.0 document (GET /openapi.json) and its Swagger UI page (GET /docs, assets from the
`swagger_ui_bundle` package: no CDN).

The document is built from the code's own names (`params.OPTIONS`, the configured k range, `errors.ERROR_CODES`), and
tests/test_openapi.py holds it to the app: every route and method, every error code raised, validity by
openapi-spec-validator; Schemathesis then checks what the running service answers against it.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from flask import Blueprint, current_app, jsonify, send_from_directory
from PIL import Image

from runtime import events
from service import params
from service.errors import ERROR_CODES
from service.searcher import Searcher, UnknownProduct
from service.state import get_holder

bp = Blueprint("openapi", __name__)
CLIENT_PATTERN = f"^{events.CLIENT_ID.pattern}$"

FILTERS_TEXT = ("Filters: a query-string or form parameter named after a filterable column (`GET /api/filters` "
                "lists them) with one value, repeated for alternatives (`?gender=Men&gender=Unisex`), and in a JSON "
                "body the `filters` object. Values of one column are alternatives; columns all apply. Any other "
                "parameter is ignored and listed in the answer's `ignored`. Options come from the JSON body, else a "
                "form field, else the query string.")


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_STATUSES = {400: "bad input: the message says what to change", 401: "no bearer token", 403: "refused",
                  404: "not found", 409: "conflicts with how the index was built", 413: "too large",
                  415: "not an accepted image format", 422: "understood but not usable",
                  429: "too many requests from this address (nginx's limit_req on Beanstalk): retry after Retry-After",
                  503: "not ready, a file gone under the worker, or S3 not answering: retry"}


def _errors(*statuses: int) -> dict:
    return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}


def _html_page(summary: str, operation_id: str) -> dict:
    return {"get": {"summary": summary, "operationId": operation_id, "responses": {"200": {
        "description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}}


def _file_route(summary: str, operation_id: str) -> dict:
    """A GET of a static file by name: the file, or a 404."""
    return {"get": {"summary": summary, "operationId": operation_id,
                    "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": {
                        "type": "string", "format": "binary"}}}}, **_errors(404)}}}


def _option_parameters(max_k: int, default_k: int, names: tuple[str, ...]) -> list[dict]:
    """The query parameters of `params.OPTIONS` (a KeyError here is an option added without its documentation)."""
    described = {
        "k": ("products wanted", {"type": "integer", "minimum": 1, "maximum": max_k, "default": default_k}),
        "bbox": ("search only this box: left,top,right,bottom in fractions of the upright photo, e.g. "
                 "0.1,0.2,0.6,0.9", {"type": "string"}),
        "collapse": ("at most one product per near-duplicate group", {"type": "boolean"}),
        "min_score": ("drop results whose returned `score` is below this",
                      {"type": "number", "minimum": -1, "maximum": 1}),
    }
    return [{"name": name, "in": "query", "required": False, "description": described[name][0],
             "schema": described[name][1]} for name in names]


def _schemas(max_k: int) -> dict[str, Any]:
    string_list = {"type": "array", "items": {"type": "string"}}
    client_id = {"type": "string", "pattern": CLIENT_PATTERN, "nullable": True,
                 "description": "the X-Client-Id of the search (default: this request's header)"}
    product = {"type": "object", "required": ["product_id", "name", "category", "metadata", "image_url", "images"],
               "properties": {"product_id": {"type": "string"}, "name": {"type": "string"},
                              "category": {"type": "string"}, "metadata": {"type": "object"},
                              "image_url": {"type": "string", "description": "the matched (else first) image"},
                              "images": string_list}}
    result = {"allOf": [_ref("Product"), {"type": "object", "required": ["rank", "matched_image", "score"],
                                          "properties": {"rank": {"type": "integer", "minimum": 1},
                                                         "matched_image": {"type": "integer", "minimum": 0},
                                                         "score": {"type": "number"}}}]}
    answer = {"results": {"type": "array", "items": _ref("Result")}, "k": {"type": "integer"},
              "filters": {"type": "object", "additionalProperties": string_list},
              "collapse": {"type": "boolean"}, "min_score": {"type": "number", "nullable": True},
              "ignored": {**string_list, "description": "parameters that are neither an option nor a filter"},
              "query_id": {"type": "string", "description": "this search's id: send it with /api/events"},
              "version": {"type": "string"}, "timings_ms": {"type": "object",
                                                            "additionalProperties": {"type": "number"}}}
    filter_value = {"oneOf": [{"type": "string"}, string_list]}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["status", "code", "message"],
            "properties": {"status": {"type": "integer"}, "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                           "message": {"type": "string"}}}}},
        "Product": product,
        "Result": result,
        "SearchResponse": {"type": "object", "required": [*answer, "crop"], "properties": {
            **answer, "crop": {"type": "object", "nullable": True, "properties": {
                "bbox": {"type": "array", "items": {"type": "number"}},
                "pixels": {"type": "array", "items": {"type": "integer"}},
                "size": {"type": "array", "items": {"type": "integer"}}}}}},
        "SimilarResponse": {"type": "object", "required": ["product", *answer],
                            "properties": {"product": _ref("Product"), **answer}},
        "FiltersResponse": {"type": "object", "required": ["columns", "facets", "count", "collapse"], "properties": {
            "columns": string_list,
            "facets": {"type": "object", "additionalProperties": {"type": "array", "items": {
                "type": "object", "required": ["value", "count"],
                "properties": {"value": {"type": "string"}, "count": {"type": "integer"}}}}},
            "count": {"type": "integer"}, "collapse": {"type": "boolean"}}},
        "SearchJSON": {"type": "object", "description": "exactly one of image_url and image_base64", "properties": {
            "image_url": {"type": "string", "description": "an http(s) URL of a photo, fetched within "
                                                           "URL_TIMEOUT_S"},
            "image_base64": {"type": "string", "description": "the photo's bytes as base64 (a data: URL works)"},
            "k": {"type": "integer", "minimum": 1, "maximum": max_k},
            "bbox": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 4,
                     "maxItems": 4, "description": "left, top, right, bottom in fractions of the upright photo"},
            "collapse": {"type": "boolean"}, "min_score": {"type": "number", "minimum": -1, "maximum": 1},
            "filters": {"type": "object", "additionalProperties": filter_value,
                        "description": "column -> a value or a list of alternatives"}}},
        "SearchForm": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}, "k": {"type": "integer", "minimum": 1,
                                                                   "maximum": max_k},
            "bbox": {"type": "string", "description": "left,top,right,bottom in fractions, e.g. 0.1,0.2,0.6,0.9"},
            "collapse": {"type": "boolean"}, "min_score": {"type": "number", "minimum": -1, "maximum": 1}},
            "additionalProperties": {"type": "string", "description": "a filter on a column"}},
        "Event": {"type": "object", "required": ["action_name", "query_id", "event_attributes"],
                  "description": "a UBI event: what a shopper did with a search's result", "properties": {
                      "action_name": {"type": "string", "enum": list(events.ACTIONS)},
                      "query_id": {"type": "string", "maxLength": 64}, "client_id": client_id,
                      "event_attributes": {"type": "object", "required": ["object", "position"], "properties": {
                          "object": {"type": "object", "required": ["object_id"], "properties": {
                              "object_id": {"type": "string", "maxLength": 256,
                                            "description": "the product's id"}}},
                          "position": {"type": "object", "required": ["ordinal"], "properties": {
                              "ordinal": {"type": "integer", "minimum": 1, "maximum": 1000,
                                          "description": "the result's rank"}}}}}}},
        "EventsAccepted": {"type": "object", "required": ["accepted", "recorded"], "properties": {
            "accepted": {"type": "integer", "description": "events queued (0 when events are off or dropped)"},
            "recorded": {"type": "boolean", "description": "whether this service records events (EVENTS_DIR)"}}},
        "Health": {"type": "object", "required": ["status", "version", "items"], "properties": {
            "status": {"type": "string", "enum": ["ok"]}, "version": {"type": "string"},
            "items": {"type": "integer"}, "encoder": {"type": "string"}, "dim": {"type": "integer"},
            "worker": {"type": "integer"}, "loaded_at": {"type": "number"}, "load_seconds": {"type": "number"},
            "refused": {"type": "object", "nullable": True}, "retrying": {"type": "string", "nullable": True},
            "ab": {"type": "object", "description": "the A/B test's second index (AB_ARTIFACTS), when there is one"}},
            "description": "status, version and items for anyone; the rest only with the admin token"},
        "HealthUnavailable": {"allOf": [_ref("Error"), {"type": "object", "required": ["status"], "properties": {
            "status": {"type": "string", "enum": ["loading", "error"]}}}]},
        "Reloaded": {"type": "object", "required": ["status", "version", "items"], "properties": {
            "status": {"type": "string", "enum": ["reloaded"]}, "previous_version": {"type": "string",
                                                                                     "nullable": True},
            "version": {"type": "string"}, "items": {"type": "integer"}}},
    }


EXAMPLE_SIDE = 96  # px: the example photo is a product's thumbnail this small, a few KB of base64


def examples(searcher: Searcher | None) -> dict[str, str]:
    """A served product's id and a small photo of it as base64: "Try it out" in /docs, and the requests that
    Schemathesis sends first, then answer with real results. Empty while nothing is served."""
    if searcher is None:
        return {}
    for number in range(min(searcher.count, 100)):
        item = searcher.item(number)
        try:
            searcher.product(str(item["product_id"]))
        except UnknownProduct:  # removed by a delta
            continue
        out = io.BytesIO()
        with Image.open(searcher.image_file(item, 0)) as image:
            image.convert("RGB").resize((EXAMPLE_SIDE, EXAMPLE_SIDE)).save(out, "JPEG", quality=80)
        return {"product_id": str(item["product_id"]), "image_base64": base64.b64encode(out.getvalue()).decode()}
    return {}


def document(config: dict, example: dict[str, str] | None = None) -> dict:
    """The OpenAPI 3.0 document of the service, for this configuration's limits, with `examples` when given."""
    example = example or {}
    max_k, default_k = int(config["MAX_K"]), int(config["DEFAULT_K"])
    options = _option_parameters(max_k, default_k, params.OPTIONS)
    query_options = [p for p in options if p["name"] != "bbox"]  # a box needs a photo
    product_id = {"name": "product_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "the catalog's product id"}
    if "product_id" in example:
        product_id["example"] = example["product_id"]
    product_errors = _errors(400, 404, 503)
    client = {"name": "X-Client-Id", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": CLIENT_PATTERN},
              "description": "a random id the client keeps (never personal): links a search to its events and keeps "
                             "the client in one arm of an A/B test"}
    paths = {
        "/api/search": {"post": {
            "summary": "Products most similar to a photo (or a box of it)", "operationId": "search",
            "description": f"The photo is a multipart `image` file or JSON `image_url` / `image_base64`. "
                           f"{FILTERS_TEXT}",
            "parameters": [*options, client],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": _ref("SearchForm")},
                "application/json": {"schema": _ref("SearchJSON"), **(
                    {"example": {"image_base64": example["image_base64"], "k": 5}} if "image_base64" in example
                    else {})}}},
            "responses": {"200": _json(_ref("SearchResponse"), "ranked products"),
                          **_errors(400, 409, 413, 415, 422, 429, 503)}}},
        "/api/products/{product_id}": {"get": {
            "summary": "One product", "operationId": "product", "parameters": [product_id],
            "responses": {"200": _json(_ref("Product"), "the product"), **product_errors}}},
        "/api/products/{product_id}/similar": {"get": {
            "summary": "More like this product", "operationId": "similar", "description": FILTERS_TEXT,
            "parameters": [product_id, *query_options, client],
            "responses": {"200": _json(_ref("SimilarResponse"), "the product and the ranked products"),
                          **_errors(400, 404, 409, 429, 503)}}},
        "/api/filters": {"get": {
            "summary": "Filterable columns and facet counts", "operationId": "filters", "parameters": [client],
            "responses": {"200": _json(_ref("FiltersResponse"), "columns, facets, product count"),
                          **_errors(503)}}},
        "/api/events": {"post": {
            "summary": "Record what a shopper did with a result (click, more like this...)", "operationId": "events",
            "description": "One UBI event, or a list of up to 50; any content type (sendBeacon sends text/plain).",
            "parameters": [client],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                _ref("Event"), {"type": "array", "items": _ref("Event"), "minItems": 1, "maxItems": 50}]}}}},
            "responses": {"202": _json(_ref("EventsAccepted"), "queued"), **_errors(400, 413, 429)}}},
        "/images/{product_id}": {"get": {
            "summary": "A product's thumbnail (320 px JPEG)", "operationId": "image",
            "parameters": [product_id, {"name": "n", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                                        "description": "which of its images, from 0"}],
            "responses": {"200": {"description": "the thumbnail", "content": {"image/jpeg": {"schema": {
                "type": "string", "format": "binary"}}}}, **product_errors}}},
        "/health": {"get": {
            "summary": "Readiness for the load balancer", "operationId": "health",
            "responses": {"200": _json(_ref("Health"), "serving an index"),
                          "503": _json(_ref("HealthUnavailable"), "nothing to serve yet")}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of every worker", "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {
                "schema": {"type": "string"}}}}}}},
        "/api/admin/reload": {"post": {
            "summary": "Move the pointer to a version (or check it now) and load it", "operationId": "reload",
            "security": [{"adminToken": []}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"version": {"type": "string"}}}}}},
            "responses": {"200": _json(_ref("Reloaded"), "loaded"), **_errors(400, 401, 403, 404, 422, 503)}}},
        "/": _html_page("The shopper's search page", "page"),
        "/static/{filename}": _file_route("The page's scripts, styles and images", "static"),
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")}}},
        "/docs": _html_page("This document, rendered (Swagger UI)", "docs"),
        "/docs/assets/{filename}": _file_route("Swagger UI's scripts and styles", "docsAssets"),
    }
    errors = {f"Error{status}": _json(_ref("Error"), text) for status, text in ERROR_STATUSES.items()}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Visual product search", "version": "1",
                 "description": "Search a retail catalog by photo. Every error is JSON "
                                "`{\"error\": {\"status\", \"code\", \"message\"}}`; the codes are listed in the "
                                "Error schema. " + "; ".join(f"`{c}`: {m}" for c, m in ERROR_CODES.items())},
        "paths": paths,
        "components": {"schemas": _schemas(max_k), "responses": errors,
                       "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                                          "description": "ADMIN_TOKEN"}}},
    }


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return jsonify(document(current_app.config, examples(get_holder().searcher)))


@bp.get("/docs")
def docs():
    """The OpenAPI document rendered by Swagger UI."""
    return send_from_directory(current_app.static_folder, "docs.html")


@bp.get("/docs/assets/<path:filename>")
def docs_assets(filename: str):
    """Swagger UI's files, from the swagger_ui_bundle package."""
    from swagger_ui_bundle import swagger_ui_path

    return send_from_directory(swagger_ui_path, filename, max_age=86400)
