"""Fetch a query image by URL, connecting only to an address that was resolved once and vetted.

Resolving a host to vet it and letting urllib resolve it again to connect lets DNS rebinding (a public answer
first, 169.254.169.254 second) reach the cloud metadata service. Here each connection, redirects included,
resolves its host once, refuses it when any answer is not a public address, and connects to that answer.
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

from service.errors import TOO_LARGE, APIError

DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "visual-search/1"


def vetted_addresses(host: str, port: int, allow_private: bool) -> list[tuple]:
    """Resolve `host` once; return its getaddrinfo answers, or a 400 when one of them is not a public address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise APIError(400, "url_unreachable", f"cannot resolve the host of image_url: {host}") from None
    if not allow_private:
        for info in infos:
            if not ipaddress.ip_address(info[4][0].split("%")[0]).is_global:
                raise APIError(400, "bad_image_url",
                               "image_url points to a private or local address; use a public URL")
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


def _connect(host: str, port: int, timeout: float | None, allow_private: bool, deadline: Deadline
             ) -> socket.socket:
    """Open a TCP connection to one of `host`'s vetted addresses (no second resolution), shut down at `deadline`."""
    last: OSError | None = None
    for family, kind, proto, _, address in vetted_addresses(host, port, allow_private):
        try:
            sock = open_socket(family, kind, proto, address, timeout)
        except OSError as exc:
            last = exc
            continue
        deadline.add(sock)
        return sock
    raise last or OSError(f"no address for {host}")


def _handlers(allow_private: bool, deadline: Deadline) -> list[urllib.request.BaseHandler]:
    """urllib handlers whose connections go through `_connect`."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(self.host, self.port, self.timeout, allow_private, deadline)

    class SecureConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = _connect(self.host, self.port, self.timeout, allow_private, deadline)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate of the name

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Connection, req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SecureConnection, req, context=ssl.create_default_context())

    return [Handler(), SecureHandler(), _SchemeCheckingRedirects()]


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def check_url(url: object) -> urllib.parse.ParseResult:
    """Return the parsed URL, or a 400 unless it is an http(s) URL with a host and a valid port."""
    if not isinstance(url, str):
        raise APIError(400, "bad_image_url", "image_url must be a string")
    parsed = urllib.parse.urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise APIError(400, "bad_image_url", "image_url has an invalid port") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        raise APIError(400, "bad_image_url", "image_url must be an http:// or https:// URL")
    return parsed


def fetch_url(url: object, limit: int, timeout: float, allow_private: bool) -> bytes:
    """Download an image URL within `timeout` seconds in all (connections, redirects and the body; resolving the
    host name is the system resolver's), with a size cap, from public addresses only unless `allow_private`."""
    check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(*_handlers(allow_private, deadline))
        try:
            with opener.open(request, timeout=timeout) as response:
                data = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise APIError(400, "url_unreachable", f"image_url answered HTTP {exc.code}; check the link") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise APIError(400, "url_unreachable", f"image_url did not send its image within {timeout:g} s")\
                    from None
            reason = getattr(exc, "reason", exc)
            raise APIError(400, "url_unreachable", f"could not fetch image_url: {reason}") from None
    if deadline.expired:  # the body was cut at the deadline, short of its end
        raise APIError(400, "url_unreachable", f"image_url did not send its image within {timeout:g} s")
    if len(data) > limit:
        raise APIError(413, TOO_LARGE, f"image_url returned more than the {limit // 2**20} MB limit of an image")
    return data
