"""URL fetching (`runtime.fetch`, the service's image_url and acquire's catalog URLs): one resolution per connection,
vetted and then used (no DNS rebinding), default ports, conditional requests, and the service's answer to each
failure."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from runtime import fetch
from runtime.fetch import FetchError
from service.errors import APIError
from service.uploads import FETCH_ERRORS, fetch_image

PUBLIC = "93.184.215.14"  # a global address: vetting accepts it; the test never lets a packet reach it


@contextmanager
def serving(answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 whose GETs `answer` handles; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer(self)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def local_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every path it is asked for."""
    seen: list[str] = []

    def answer(request: http.server.BaseHTTPRequestHandler) -> None:
        seen.append(request.path)
        request.send_response(200)
        request.end_headers()
        request.wfile.write(b"secret")

    with serving(answer) as port:
        yield port, seen


def rebinding_resolver(port: int, calls: list[tuple]):
    """getaddrinfo for 'shop.test': a public address the first time, 127.0.0.1 every time after."""
    real = socket.getaddrinfo

    def resolve(host, service, *args, **kwargs):
        if host != "shop.test":
            return real(host, service, *args, **kwargs)
        calls.append((host, service))
        address = PUBLIC if len(calls) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_a_rebinding_resolver_cannot_reach_a_local_address(monkeypatch) -> None:
    connected: list[tuple] = []

    def refuse(family, kind, proto, address, timeout):
        connected.append(address)
        raise ConnectionRefusedError("the test lets no packet leave this machine")

    with local_server() as (port, seen):
        calls: list[tuple] = []
        monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(port, calls))
        monkeypatch.setattr(fetch, "open_socket", refuse)
        with pytest.raises(FetchError) as error:
            fetch.fetch_url(f"http://shop.test:{port}/latest/meta-data/", 1000, 1.0, allow_private=False)
    assert error.value.reason == "unreachable" and FETCH_ERRORS["unreachable"] == (400, "url_unreachable")
    assert calls == [("shop.test", port)]  # resolved once
    assert connected == [(PUBLIC, port)]  # and the vetted answer is the one connected to
    assert seen == []


def test_one_resolution_serves_the_connection(monkeypatch) -> None:
    real = socket.getaddrinfo
    calls: list[str] = []

    def resolve_once(host, service, *args, **kwargs):
        if host != "shop.test":
            return real(host, service, *args, **kwargs)
        calls.append(host)
        if len(calls) > 1:
            raise socket.gaierror("a second resolution: the connection did not use the vetted answer")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", service))]

    with local_server() as (port, seen):
        monkeypatch.setattr(socket, "getaddrinfo", resolve_once)
        got = fetch.fetch_url(f"http://shop.test:{port}/p.jpg", 1000, 2.0, allow_private=True)
        assert got.status == 200 and got.data == b"secret"
    assert seen == ["/p.jpg"] and calls == ["shop.test"]


@pytest.mark.parametrize("url, port", [("http://shop.test/a.jpg", 80), ("https://shop.test/a.jpg", 443),
                                       ("http://shop.test:8080/a.jpg", 8080)])
def test_default_port_follows_the_scheme(monkeypatch, url: str, port: int) -> None:
    asked: list[tuple] = []

    def resolve(host, service, *args, **kwargs):
        asked.append((host, service))
        raise socket.gaierror("no such host in this test")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(FetchError, match="cannot resolve") as error:
        fetch.fetch_url(url, 1000, 1.0, allow_private=False)
    assert asked == [("shop.test", port)] and error.value.reason == "unresolved"


@pytest.mark.parametrize("url", ["ftp://shop.test/a.jpg", "http:///a.jpg", "http://shop.test:99999/a.jpg", 42])
def test_malformed_urls_are_a_400(url: object) -> None:
    with pytest.raises(APIError) as error:
        fetch_image(url, 1000, {"URL_TIMEOUT_S": 1.0, "ALLOW_PRIVATE_URLS": False})
    assert error.value.status == 400 and error.value.code == "bad_image_url"
    assert "image_url" in error.value.message


def test_every_reason_has_an_answer_in_the_service() -> None:
    assert set(FETCH_ERRORS) == set(FetchError.REASONS)
    assert all(400 <= status < 500 for status, _ in FETCH_ERRORS.values())


@contextmanager
def etag_server() -> Iterator[tuple[int, list[dict]]]:
    """An HTTP server on 127.0.0.1 that serves one image with an ETag, answers 304 to a matching If-None-Match and
    404 to other paths; it records the request headers."""
    seen: list[dict] = []

    def answer(request: http.server.BaseHTTPRequestHandler) -> None:
        seen.append(dict(request.headers))
        if request.path != "/p.jpg":
            request.send_response(404)
        elif request.headers.get("If-None-Match") == '"v1"':
            request.send_response(304)
            request.send_header("ETag", '"v1"')
        else:
            request.send_response(200)
            request.send_header("ETag", '"v1"')
            request.end_headers()
            request.wfile.write(b"jpeg bytes")
            return
        request.end_headers()

    with serving(answer) as port:
        yield port, seen


def test_a_conditional_request_gets_a_304_and_an_error_status_is_an_error() -> None:
    with etag_server() as (port, seen):
        first = fetch.fetch_url(f"http://127.0.0.1:{port}/p.jpg", 1000, 2.0, allow_private=True, user_agent="ua/1")
        again = fetch.fetch_url(f"http://127.0.0.1:{port}/p.jpg", 1000, 2.0, allow_private=True,
                                headers={"If-None-Match": first.etag})
        with pytest.raises(FetchError, match="answered HTTP 404") as missing:
            fetch.fetch_url(f"http://127.0.0.1:{port}/gone.jpg", 1000, 2.0, allow_private=True)
        with pytest.raises(FetchError, match="more than the 0 MB limit") as large:
            fetch.fetch_url(f"http://127.0.0.1:{port}/p.jpg", 4, 2.0, allow_private=True)
    assert (first.status, first.data, first.etag) == (200, b"jpeg bytes", '"v1"')
    assert (again.status, again.data, again.etag) == (304, b"", '"v1"')
    assert (missing.value.reason, missing.value.status, large.value.reason) == ("http_status", 404, "too_large")
    assert seen[0]["User-Agent"] == "ua/1" and seen[1]["If-None-Match"] == '"v1"'
