"""What the tests share: the repository's paths, a JSON client, client threads under load, and the serving
harness the benchmarks use too (a free port, multipart bodies, gunicorn started as the Procfile does)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.common import (
    ADMIN_TOKEN,
    free_port,
    health,
    launch_gunicorn,
    multipart,
    raw_request,
    server_timing,
    start_gunicorn,
    stop,
    timed,
    wait_for_workers,
)

__all__ = ["ADMIN_TOKEN", "ROOT", "SHARED", "Load", "free_port", "health", "http_json", "launch_gunicorn", "moto_s3",
           "multipart", "raw_request", "server_timing", "slow_image_server", "start_gunicorn", "stop", "timed",
           "wait_for_workers"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the real catalogs and models; tests that need them skip when it is absent


def http_json(url: str, data: bytes | None = None, headers: dict | None = None,
              timeout: float = 30) -> tuple[int, dict]:
    """Send one request with urllib (which sends the whole body before reading); return (status, JSON body)."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def slow_image_server(photo: bytes, delay_s: float) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every GET with `photo` after `delay_s` seconds (what a slow, or
    hostile, image_url is); yields the photo's URL."""
    import http.server

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/p.jpg"
    finally:
        server.shutdown()


@contextlib.contextmanager
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """S3 and IAM APIs (moto's server) on 127.0.0.1, empty, with boto3 pointed at it through the environment; yields
    its endpoint."""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # IAM knows AWS's managed policies, as AWS does
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # moto keeps its state per process, not per server: start every test from an empty account
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).read()
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        yield endpoint
    finally:
        server.stop()


class Load:
    """Client threads sending requests in a loop (each on a new connection) until stopped; keeps every status.

    Args:
        requests: (url, body, content type) tuples, sent round-robin.
        clients: how many threads.
    """

    def __init__(self, requests: list[tuple[str, bytes | None, str | None]], clients: int = 4) -> None:
        self.requests, self.statuses = requests, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            url, body, content_type = self.requests[i % len(self.requests)]
            self.statuses.append(timed(url, body, content_type, timeout=60)[1])
            i += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def counts(self) -> dict[int, int]:
        """{HTTP status (0: connection failed): how many}."""
        return {status: self.statuses.count(status) for status in sorted(set(self.statuses))}
