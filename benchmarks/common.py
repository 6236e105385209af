"""Helpers every benchmark (and the live tests) share: HTTP timing, gunicorn start-up, memory readers, scripts."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(field: str, filename: str, data: bytes, boundary: str | None = None) -> tuple[bytes, str]:
    """Encode one file as multipart/form-data; return (body, content type). The boundary is random unless given,
    as a browser's is: a server must not gain from seeing the same one twice."""
    boundary = boundary or f"----visualsearch{uuid.uuid4().hex}"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def timed(url: str, body: bytes | None = None, content_type: str | None = None,
          timeout: float = 60) -> tuple[float, int]:
    """Send one request; return (seconds, HTTP status), status 0 when the connection failed or was cut mid-answer."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if content_type else {})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # IncompleteRead: a worker killed mid-answer
        status = 0
    return time.perf_counter() - started, status


class RawReply(NamedTuple):
    """What `raw_request` measured: seconds from connect to the server's close, status, headers, body."""

    seconds: float
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(port: int, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 60) -> RawReply:
    """Send one HTTP/1.1 request on a new connection to 127.0.0.1 with the least client work (one `sendall`, then
    `recv` until the Content-Length's bytes are in, or the server closes): the time is the server's and the
    kernel's, as a browser or nginx (C clients) would see it, not urllib's Python."""
    head = f"{'POST' if body is not None else 'GET'} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: {content_type or 'application/octet-stream'}\r\nContent-Length: {len(body)}\r\n"
    message = (head + "\r\n").encode() + (body or b"")
    received, end, length = b"", -1, None
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(message)
        while chunk := sock.recv(1 << 16):
            received += chunk
            if end < 0 and (end := received.find(b"\r\n\r\n")) >= 0:
                found = re.search(rb"\r\ncontent-length: *(\d+)", received[:end], re.IGNORECASE)
                length = int(found.group(1)) if found else None
            if length is not None and len(received) >= end + 4 + length:
                break
        seconds = time.perf_counter() - started
    lines = received[:max(end, 0)].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    return RawReply(seconds, status, headers, received[end + 4:] if end >= 0 else b"")


def server_timing(header: str) -> dict[str, float]:
    """Parse a Server-Timing header ("parse;dur=0.21, embed;dur=1.3") into {name: milliseconds}."""
    out = {}
    for metric in filter(None, (part.strip() for part in header.split(","))):
        name, *params = metric.split(";")
        durations = [float(p.split("=", 1)[1]) for p in params if p.strip().startswith("dur=")]
        if durations:
            out[name.strip()] = durations[0]
    return out


def percentiles(seconds: list[float]) -> str:
    """p50 and p99 in milliseconds, as one line."""
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):8.2f} ms   p99 {np.percentile(ms, 99):8.2f} ms   (n={len(ms)})"


# The admin token of every gunicorn started here: /health names its worker and load state only to the admin
ADMIN_TOKEN = "harness-admin-token"


def health(base: str, timeout: float = 30, token: str = ADMIN_TOKEN) -> dict:
    """/health with its details (the worker's pid, load times, a refused version), asked with the admin token."""
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_workers(base: str, workers: int, deadline_s: float, process: subprocess.Popen | None = None,
                     token: str = ADMIN_TOKEN) -> set[int]:
    """Ask /health until `workers` distinct worker pids have answered 200 (each has loaded the index).

    Raises:
        RuntimeError: the server exited, or fewer workers answered within `deadline_s`.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while len(seen) < workers and time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode} before it was ready")
        try:
            seen.add(int(health(base, timeout=10, token=token)["worker"]))
        except (OSError, ValueError):
            time.sleep(0.2)
    if len(seen) < workers:
        raise RuntimeError(f"only {len(seen)} of {workers} gunicorn workers loaded the index within {deadline_s:.0f} s")
    return seen


def launch_gunicorn(index: Path | str, port: int, workers: int, cache: Path | str, python: str = sys.executable,
                    app_dir: Path = ROOT, env: dict[str, str] | None = None, log: Path | None = None,
                    app: str = "application:application") -> subprocess.Popen:
    """Start gunicorn as the Procfile does, over `index`, without waiting for it (see `start_gunicorn`)."""
    environ = {**os.environ, "ADMIN_TOKEN": ADMIN_TOKEN, "ARTIFACTS": str(index), "GUNICORN_BIND": f"127.0.0.1:{port}",
               "WEB_CONCURRENCY": str(workers), "ARTIFACTS_CACHE": str(cache), "LOG_LEVEL": "warning", **(env or {})}
    command = [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", app]
    if log:
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(command, cwd=app_dir, env=environ, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.Popen(command, cwd=app_dir, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start_gunicorn(index: Path | str, port: int, workers: int, cache: Path | str, deadline_s: float = 180,
                   python: str = sys.executable, app_dir: Path = ROOT, env: dict[str, str] | None = None,
                   log: Path | None = None, app: str = "application:application") -> tuple[subprocess.Popen, set[int]]:
    """Start gunicorn as the Procfile does, over `index`, and wait until every worker has loaded it.

    Args:
        index: ARTIFACTS (an index folder or s3:// URI).
        port: the port on 127.0.0.1.
        workers: WEB_CONCURRENCY.
        cache: ARTIFACTS_CACHE.
        deadline_s: how long the workers may take to load.
        python: the interpreter whose gunicorn runs (e.g. a serving-only virtual environment).
        app_dir: the folder holding application.py and gunicorn.conf.py (a checkout or an unpacked bundle).
        env: more environment variables.
        log: a file for gunicorn's output (default: discarded).
        app: the WSGI application gunicorn imports.

    Returns:
        The gunicorn process and the pids of its workers.
    """
    process = launch_gunicorn(index, port, workers, cache, python, app_dir, env, log, app)
    try:
        pids = wait_for_workers(f"http://127.0.0.1:{port}", workers, deadline_s, process,
                                (env or {}).get("ADMIN_TOKEN", ADMIN_TOKEN))
    except BaseException:
        stop(process)
        raise
    return process, pids


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _status_mib(field: str, pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (VmRSS)."""
    return _status_mib("VmRSS", pid)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB since start or the last `reset_peak` (VmHWM)."""
    return _status_mib("VmHWM")


def reset_peak() -> float:
    """Reset the peak-RSS mark (Linux clear_refs 5) and return the current RSS in MiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return rss_mib()


def smaps(pid: int, files: tuple[str, ...] = ()) -> dict[str, float]:
    """MiB of a process's memory from /proc: RSS, PSS, PSS of anonymous pages, private (USS), and per file name in
    `files`, the RSS and PSS of its mappings."""
    out = {f"{kind}_{name}": 0.0 for name in files for kind in ("rss", "pss")}
    current = None
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            fields = line.split()
            if not line[0].isupper():  # a mapping's header: address perms offset dev inode [path]
                current = Path(fields[5]).name if len(fields) > 5 and Path(fields[5]).name in files else None
            elif current and fields[0] in ("Rss:", "Pss:"):
                out[f"{fields[0][:-1].lower()}_{current}"] += int(fields[1]) / 1024
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            fields = line.split()
            if fields[0] in ("Rss:", "Pss:", "Pss_Anon:", "Pss_File:", "Private_Clean:", "Private_Dirty:"):
                out[fields[0][:-1].lower()] = int(fields[1]) / 1024
    out["private"] = out.pop("private_clean", 0.0) + out.pop("private_dirty", 0.0)
    return out
