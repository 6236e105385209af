"""image_url fetching: one resolution per connection, vetted and then used (no DNS rebinding), default ports."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service import fetch
from service.errors import APIError

PUBLIC = "93.184.215.14"  # a global address: vetting accepts it; the test never lets a packet reach it


@contextmanager
def local_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every path it is asked for."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


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
        with pytest.raises(APIError) as error:
            fetch.fetch_url(f"http://shop.test:{port}/latest/meta-data/", 1000, 1.0, allow_private=False)
    assert error.value.status == 400 and error.value.code == "url_unreachable"
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
        assert fetch.fetch_url(f"http://shop.test:{port}/p.jpg", 1000, 2.0, allow_private=True) == b"secret"
    assert seen == ["/p.jpg"] and calls == ["shop.test"]


@pytest.mark.parametrize("url, port", [("http://shop.test/a.jpg", 80), ("https://shop.test/a.jpg", 443),
                                       ("http://shop.test:8080/a.jpg", 8080)])
def test_default_port_follows_the_scheme(monkeypatch, url: str, port: int) -> None:
    asked: list[tuple] = []

    def resolve(host, service, *args, **kwargs):
        asked.append((host, service))
        raise socket.gaierror("no such host in this test")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(APIError, match="cannot resolve"):
        fetch.fetch_url(url, 1000, 1.0, allow_private=False)
    assert asked == [("shop.test", port)]


@pytest.mark.parametrize("url", ["ftp://shop.test/a.jpg", "http:///a.jpg", "http://shop.test:99999/a.jpg", 42])
def test_malformed_urls_are_a_400(url: object) -> None:
    with pytest.raises(APIError) as error:
        fetch.fetch_url(url, 1000, 1.0, allow_private=False)
    assert error.value.status == 400 and error.value.code == "bad_image_url"
