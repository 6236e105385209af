"""The OpenAPI document: valid, true to the app's routes and error codes, rendered by /docs in a real browser, and
held to what gunicorn answers by Schemathesis (over a thousand generated requests)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from service import create_app, params
from service.experiment import CLIENT_HEADER
from service.uploads import FETCH_ERRORS
from tests.conftest import gunicorn_over
from tests.helpers import ROOT
from tests.test_service_live import CHROMIUM, CHROMIUM_FLAGS

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def app(demo_index: Path, tmp_path_factory: pytest.TempPathFactory):
    return create_app({"ARTIFACTS": str(demo_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                       "ARTIFACTS_CACHE": str(tmp_path_factory.mktemp("cache")), "RELOAD_CHECK_S": 0})


@pytest.fixture(scope="module")
def spec(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi(spec: dict) -> None:
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_and_method_is_documented_and_nothing_else(app, spec: dict) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<path:{name}>", f"{{{name}}}").replace(f"<{name}>", f"{{{name}}}")
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == documented


def test_the_documented_options_are_the_codes(spec: dict, app) -> None:
    search = {p["name"] for p in spec["paths"]["/api/search"]["post"]["parameters"] if p["in"] == "query"}
    assert search == set(params.OPTIONS)
    headers = {p["name"] for p in spec["paths"]["/api/search"]["post"]["parameters"] if p["in"] == "header"}
    assert headers == {CLIENT_HEADER}
    body = spec["components"]["schemas"]["SearchJSON"]["properties"]
    assert set(body) == set(params.OPTIONS) | {"image_url", "image_base64", "filters"}
    k = next(p for p in spec["paths"]["/api/search"]["post"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == app.config["MAX_K"] and k["schema"]["default"] == app.config["DEFAULT_K"]


def _raised_codes() -> set[str]:
    """Every `code` literal the service passes to APIError, and the other error codes it writes."""
    codes = set()
    for path in (ROOT / "service").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "APIError" and len(node.args) > 1:
                code = node.args[1]
                if isinstance(code, ast.Constant):
                    codes.add(code.value)
                elif isinstance(code, ast.JoinedStr):  # f"bad_{name}" of parse_flag
                    codes.add("bad_collapse")
    codes |= {code for _, code in FETCH_ERRORS.values()}  # an image_url fetch's, by the reason it failed
    # nginx's, constants, /health's, the 500 handler, imaging's kinds
    return codes | {"rate_limited", "too_large", "load_failed", "internal_error", "image_empty", "image_format",
                    "image_corrupt", "image_pixels", "image_dimensions"}


def test_every_error_code_is_documented(spec: dict) -> None:
    from werkzeug.exceptions import BadRequest, MethodNotAllowed, NotFound

    documented = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    werkzeug = {e().name.lower().replace(" ", "_") for e in (BadRequest, MethodNotAllowed, NotFound)}
    assert _raised_codes() | werkzeug == documented


def test_examples_are_a_served_product_and_a_photo_that_finds_it(app, spec: dict) -> None:
    search = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["application/json"]["example"]
    product = spec["paths"]["/api/products/{product_id}"]["get"]["parameters"][0]["example"]
    client = app.test_client()
    assert client.get(f"/api/products/{product}").status_code == 200
    found = client.post("/api/search", json=search).get_json()["results"]
    assert product in [r["product_id"] for r in found]


@pytest.fixture(scope="module")
def server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory):
    """gunicorn with 2 workers over the demo index, as the Procfile starts it."""
    with gunicorn_over(demo_index / "index" / "current", tmp_path_factory.mktemp("openapi"),
                       {"ADMIN_TOKEN": "t0k", "RELOAD_CHECK_S": "0"}) as base:
        yield base


def test_schemathesis_finds_no_failure(server: str, tmp_path: Path) -> None:
    """Schemathesis's examples, coverage, fuzzing and stateful phases against gunicorn: no 5xx, and every answer of
    the documented status, content type and schema."""
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server}/openapi.json", "--checks", CHECKS,
               "--max-examples", "100", "--seed", "1", "--report", "json", "--report-dir", str(tmp_path),
               "--request-timeout", "10", "--warnings", "off"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache folder
                          env={**os.environ, "NO_COLOR": "1"})
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    cases = report["test_cases"]
    print(f"schemathesis: {cases['generated']} requests generated, {cases['with_failures']} with failures, "
          f"{report['operations']['tested']} operations, {report['running_time']:.1f} s")
    assert done.returncode == 0 and not report["failures"] and not report["errors"], done.stdout[-6000:]
    # every operation but GET /openapi.json, the document's own URL, which Schemathesis leaves out
    assert cases["generated"] >= MIN_REQUESTS and report["operations"]["tested"] == len(openapi_operations(server)) - 1


def openapi_operations(server: str) -> list[tuple[str, str]]:
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=10) as response:
        spec = json.load(response)
    return [(path, method) for path, item in spec["paths"].items() for method in item]


def test_docs_renders_every_operation_from_the_package_with_no_cdn(server: str) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run this test")
    from playwright.sync_api import sync_playwright

    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{server}/docs", wait_until="networkidle")
            page.wait_for_selector(".opblock", timeout=30_000)
            shown = page.locator(".opblock").count()
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()
    assert shown == len(openapi_operations(server)) and "Visual product search" in title
    assert requested and all(url.startswith((server, "data:")) for url in requested), requested
