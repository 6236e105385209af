"""Fetch an http(s) URL's bytes within a deadline and a size cap, connecting only to addresses resolved once and
vetted: the service's `image_url` and acquire's catalog images both come through here.

Resolving a host to vet it and letting urllib resolve it again to connect lets DNS rebinding (a public answer
first, 169.254.169.254 second) reach the cloud metadata service. Here each connection, redirects included,
resolves its host once, refuses it when any answer is not a public address (unless private ones are allowed),
and connects to that answer. A socket timeout bounds one operation only, so the whole fetch also has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "visual-search/1"


class FetchError(Exception):
    """Why a URL gave no bytes. `reason` is one of `REASONS`; `status` is the HTTP status when the server answered
    with an error. The message names the URL as the caller called it (`name`), for a person to act on."""

    REASONS = ("bad_url", "private_address", "unresolved", "unreachable", "timeout", "http_status", "too_large")

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"reason must be one of {self.REASONS}, got {reason!r}")
        super().__init__(message)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Response:
    """What a fetch got: the status (200, or 304 when a conditional request's content has not changed), the body
    (empty for a 304) and the ETag the server gave ("" when none)."""

    status: int
    data: bytes
    etag: str = ""


def vetted_addresses(host: str, port: int, allow_private: bool, name: str = "the URL") -> list[tuple]:
    """Resolve `host` once; return its getaddrinfo answers.

    Raises:
        FetchError: `unresolved`, or `private_address` when one answer is not a public address and private ones are
            not allowed.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise FetchError("unresolved", f"cannot resolve the host of {name}: {host}") from None
    if not allow_private:
        for info in infos:
            if not ipaddress.ip_address(info[4][0].split("%")[0]).is_global:
                raise FetchError("private_address", f"{name} points to a private or local address; use a public URL")
    return infos


def open_socket(family: int, kind: int, proto: int, address: tuple, timeout: float | None) -> socket.socket:
    """Connect a TCP socket to one resolved address."""
    sock = socket.socket(family, kind, proto)
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class Deadline:
    """The end of a whole fetch: when it comes, every socket the fetch opened is shut down, so a read blocked on it
    returns. A socket timeout bounds one operation only, and a server sending a byte a second never meets it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def add(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            if not self.expired:
                return
        self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


def _connect(host: str, port: int, timeout: float | None, allow_private: bool, deadline: Deadline, name: str
             ) -> socket.socket:
    """Open a TCP connection to one of `host`'s vetted addresses (no second resolution), shut down at `deadline`."""
    last: OSError | None = None
    for family, kind, proto, _, address in vetted_addresses(host, port, allow_private, name):
        try:
            sock = open_socket(family, kind, proto, address, timeout)
        except OSError as exc:
            last = exc
            continue
        deadline.add(sock)
        return sock
    raise last or OSError(f"no address for {host}")


def _handlers(allow_private: bool, deadline: Deadline, name: str) -> list[urllib.request.BaseHandler]:
    """urllib handlers whose connections go through `_connect`, and whose redirects are checked as the URL was."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(self.host, self.port, self.timeout, allow_private, deadline, name)

    class SecureConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = _connect(self.host, self.port, self.timeout, allow_private, deadline, name)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate of the name

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Connection, req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SecureConnection, req, context=ssl.create_default_context())

    class SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            check_url(newurl, name)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return [Handler(), SecureHandler(), SchemeCheckingRedirects()]


def check_url(url: object, name: str = "the URL") -> urllib.parse.ParseResult:
    """Return the parsed URL.

    Raises:
        FetchError: `bad_url` unless it is an http(s) URL with a host and a valid port.
    """
    if not isinstance(url, str):
        raise FetchError("bad_url", f"{name} must be a string")
    parsed = urllib.parse.urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise FetchError("bad_url", f"{name} has an invalid port") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        raise FetchError("bad_url", f"{name} must be an http:// or https:// URL")
    return parsed


def fetch_url(url: object, limit: int, timeout: float, allow_private: bool, headers: dict[str, str] | None = None,
              deadline: float | None = None, name: str = "the URL", user_agent: str = USER_AGENT) -> Response:
    """Download a URL, at most `limit` bytes, within `deadline` seconds in all (connections, redirects and the body;
    resolving the host name is the system resolver's), each socket operation within `timeout`.

    Args:
        url: an http(s) URL.
        limit: the most bytes accepted.
        timeout: seconds one socket operation may take.
        allow_private: also connect to private, loopback and link-local addresses. The service's `image_url` is a
            stranger's input and must not reach the instance's network; a catalog's own URLs may name the shop's.
        headers: more request headers (an `If-None-Match` makes a 304 a `Response`, not an error).
        deadline: seconds the whole fetch may take (default `timeout`).
        name: what the messages call the URL (`image_url` in the service's answers).
        user_agent: the User-Agent header.

    Raises:
        FetchError: the URL is malformed or private, cannot be reached, answered an HTTP error, was not received
            within the deadline, or is larger than `limit`.
    """
    check_url(url, name)
    deadline = timeout if deadline is None else deadline
    request = urllib.request.Request(url, headers={"User-Agent": user_agent, **(headers or {})})
    late = f"{name} did not send its image within {deadline:g} s"
    with Deadline(deadline) as watch:
        opener = urllib.request.build_opener(*_handlers(allow_private, watch, name))
        try:
            with opener.open(request, timeout=timeout) as response:
                data = response.read(limit + 1)
                status, etag = response.status, response.headers.get("ETag", "") or ""
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return Response(304, b"", exc.headers.get("ETag", "") or "")
            raise FetchError("http_status", f"{name} answered HTTP {exc.code}; check the link", exc.code) from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            if watch.expired:
                raise FetchError("timeout", late) from None
            reason = getattr(exc, "reason", exc)
            raise FetchError("unreachable", f"could not fetch {name}: {reason}") from None
    if watch.expired:  # the body was cut at the deadline, short of its end
        raise FetchError("timeout", late)
    if len(data) > limit:
        raise FetchError("too_large", f"{name} returned more than the {limit // 2**20} MB limit of an image")
    return Response(status, data, etag)
