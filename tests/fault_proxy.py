"""An HTTP proxy in front of an S3 server (moto) that injects the faults real S3 has: 503 SlowDown, 500 InternalError,
a dropped connection, or failures of only the GETs, only the HEADs, or only the GETs of a version's files (the
pointer answers); it counts what it forwarded and what it failed.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runtime.layout import S3_POINTER

SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
# fault -> (the methods it fails, whether the pointer CURRENT is spared, how): "drop" closes the socket, the others
# answer S3's XML errors
FAULTS = {
    "slowdown": (None, False, *SLOW_DOWN),
    "internal": (None, False, 500, "InternalError", "We encountered an internal error. Please try again."),
    "drop": (None, False, 0, "", ""),
    "get-only": ({"GET"}, False, *SLOW_DOWN),
    "head-only": ({"HEAD"}, False, *SLOW_DOWN),
    "version-gets": ({"GET"}, True, *SLOW_DOWN),
}
POINTER_SUFFIX = f"/{S3_POINTER}"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """Forward every request to `upstream` (http://host:port) unless a fault is set; `fault(name)` sets one of
    FAULTS, `fault(None)` clears it. `sent` and `failed` count requests by method."""

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._fault: str | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: the counters say what happened
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.sent[self.command] += 1
                    fault = FAULTS.get(proxy._fault) if proxy._fault else None
                    hit = fault is not None and (fault[0] is None or self.command in fault[0]) and not (
                        fault[1] and urllib.parse.urlsplit(self.path).path.endswith(POINTER_SUFFIX))
                    if hit:
                        proxy.failed[self.command] += 1
                if hit:
                    self._fail(*fault[2:])
                    return
                self._forward(body)

            def _fail(self, status: int, code: str, message: str) -> None:
                if status == 0:  # the connection drops: no status line, no bytes
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>{message}</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes | None) -> None:
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle  # noqa: N815 - http.server's names

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def fault(self, name: str | None) -> None:
        """Start failing requests as FAULTS[name] says, or stop (None)."""
        if name is not None and name not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)} or None, got {name!r}")
        with self._lock:
            self._fault = name

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(requests received, requests failed), by method, since the last `reset`."""
        with self._lock:
            return dict(self.sent), dict(self.failed)

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.sent.clear()
            self.failed.clear()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
