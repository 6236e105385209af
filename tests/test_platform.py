"""The deploy bundle run the way Beanstalk's Python platform runs it: unzipped as /var/app/current, a virtual
environment from the bundle's own requirements.txt, the Procfile's web command on PORT, and Debian's nginx in
front with the platform's layout (.platform/nginx/conf.d/*.conf in http, conf.d/elasticbeanstalk/*.conf in the
server that proxies to 127.0.0.1:PORT)."""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import deploy
from tests.helpers import ADMIN_TOKEN, free_port, multipart, slow_image_server, stop, wait_for_workers
from tests.helpers import http_json as http

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.slow  # installs the bundle's requirements into a fresh virtual environment

# What the platform writes (AL2023's nginx.conf, trimmed to what matters here, and its 00_application.conf).
NGINX_CONF = """
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/conf.d/*.conf;
    map $http_upgrade $connection_upgrade {{ default "upgrade"; }}
    server {{
        listen 127.0.0.1:{listen} default_server;
        client_header_timeout 60;
        client_body_timeout 60;
        keepalive_timeout 60;
        include {root}/conf.d/elasticbeanstalk/*.conf;
    }}
}}
"""
APPLICATION_CONF = """
location / {{
    proxy_pass http://127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
}}
"""


def need_nginx() -> None:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is missing: .ci/run installs Debian's nginx")
        pytest.skip(f"{NGINX} is absent: install Debian's nginx (apt-get install nginx) to run this test")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, demo_index: Path):
    """The bundle on the platform: yields (nginx URL, the web process's log, `nginx -t` output)."""
    need_nginx()
    root = tmp_path_factory.mktemp("platform")
    app = root / "var" / "app" / "current"
    zipfile.ZipFile(io.BytesIO(deploy.build_bundle(tensorflow=True)[0])).extractall(app)  # a hub index
    venv = root / "var" / "app" / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(app / "requirements.txt")],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]

    port = 8000 if _free(8000) else free_port()  # the platform's PORT, unless this machine already uses it
    web = (app / "Procfile").read_text().split("web:", 1)[1].strip().splitlines()[0]
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PORT": str(port),
           "ARTIFACTS": str(demo_index / "index" / "current"), "ARTIFACTS_CACHE": str(root / "cache"),
           "ADMIN_TOKEN": ADMIN_TOKEN, "ALLOW_PRIVATE_URLS": "true"}  # the abusive client's slow URLs are local
    env.pop("GUNICORN_BIND", None)
    env.pop("PYTHONPATH", None)
    log = open(root / "web.log", "w")  # noqa: SIM115 - the child writes to it until the fixture ends
    web_process = subprocess.Popen(shlex.split(web), cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)

    nginx_root = root / "nginx"
    (nginx_root / "conf.d" / "elasticbeanstalk").mkdir(parents=True)
    for conf in (app / ".platform" / "nginx" / "conf.d").glob("*.conf"):
        shutil.copy(conf, nginx_root / "conf.d")
    for conf in (app / ".platform" / "nginx" / "conf.d" / "elasticbeanstalk").glob("*.conf"):
        shutil.copy(conf, nginx_root / "conf.d" / "elasticbeanstalk")
    (nginx_root / "conf.d" / "elasticbeanstalk" / "00_application.conf").write_text(APPLICATION_CONF.format(port=port))
    listen = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""  # workers would otherwise drop to nobody
    (nginx_root / "nginx.conf").write_text(NGINX_CONF.format(user=user, root=nginx_root, listen=listen))
    command = [NGINX, "-p", str(nginx_root), "-c", str(nginx_root / "nginx.conf")]
    tested = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stderr
    nginx = subprocess.Popen([*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_workers(f"http://127.0.0.1:{port}", 2, 180, web_process)
        yield f"http://127.0.0.1:{listen}", root / "web.log", tested.stderr
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{(root / 'web.log').read_text()[-3000:]}")
    finally:
        stop(nginx)
        stop(web_process)
        log.close()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _service_413s(web_log: Path) -> int:
    """413 answers to /api/search in gunicorn's access log (nginx's own refusals never reach it)."""
    return sum('"POST /api/search HTTP/' in line and '" 413 ' in line for line in web_log.read_text().splitlines())


def noise_jpeg(megabytes: float) -> bytes:
    """A real JPEG of about `megabytes` MB, the size of a phone photo (noise barely compresses)."""
    side, data = 1000, b""
    for _ in range(3):  # JPEG's ratio on noise is found by trying, then the side is scaled to the target
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=95)
        data = out.getvalue()
        side = int(side * (megabytes * 2**20 / len(data)) ** 0.5)
    return data


def test_nginx_config_is_valid_and_health_turns_200(platform) -> None:
    proxy, _, checked = platform
    assert "syntax is ok" in checked and "test is successful" in checked
    status, body = http(f"{proxy}/health")
    assert status == 200 and body["status"] == "ok"


def test_a_9_mb_photo_is_searched_through_nginx(platform) -> None:
    proxy = platform[0]
    photo = noise_jpeg(9)
    assert 8.5 * 2**20 < len(photo) < 10 * 2**20, len(photo)
    body, content_type = multipart("image", "phone.jpg", photo)
    status, result = http(f"{proxy}/api/search?k=3", body, {"Content-Type": content_type}, timeout=120)
    assert status == 200 and len(result["results"]) == 3, result
    as_base64 = json.dumps({"image_base64": base64.b64encode(photo).decode(), "k": 3}).encode()  # 12 MB of text
    status, result = http(f"{proxy}/api/search", as_base64, {"Content-Type": "application/json"}, timeout=120)
    assert status == 200 and len(result["results"]) == 3, result


@pytest.mark.parametrize("megabytes, refused_by", [(15, "nginx"), (11, "service")])
def test_oversized_uploads_get_the_json_413_even_when_the_client_sends_everything_first(
        platform, megabytes: int, refused_by: str) -> None:
    proxy, web_log, _ = platform
    body, content_type = multipart("image", "big.jpg", os.urandom(megabytes * 2**20))
    seen_by_service = _service_413s(web_log)
    started = time.monotonic()
    # urllib, like any client that writes its whole body before reading, meets a reset if the answer is not drained
    status, error = http(f"{proxy}/api/search", body, {"Content-Type": content_type}, timeout=120)
    assert status == 413, error
    assert error["error"]["code"] == "too_large" and "10 MB" in error["error"]["message"]
    assert time.monotonic() - started < 60
    time.sleep(0.5)  # gunicorn's access log line
    answered_by_service = _service_413s(web_log) - seen_by_service
    assert answered_by_service == (1 if refused_by == "service" else 0)


def _get(url: str) -> tuple[int, dict, str | None]:
    """GET `url`: (status, JSON body, Retry-After header)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers["Retry-After"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers["Retry-After"]


def _service_lines(web_log: Path, path: str) -> int:
    return sum(f'"GET {path} HTTP/' in line for line in web_log.read_text().splitlines())


def test_a_flooding_client_is_refused_by_nginx_with_a_json_429_and_served_again_after(platform) -> None:
    """.platform's limit_req: a burst of 40 passes, then one address past 10 requests a second gets 429s that never
    reach a worker; a second later it is served again."""
    proxy, web_log, _ = platform
    time.sleep(5)  # earlier tests' requests: the bucket refills at 10 a second
    reached_before = _service_lines(web_log, "/api/filters")
    answers = [_get(f"{proxy}/api/filters") for _ in range(120)]  # as fast as one client can, one at a time
    statuses = [status for status, _, _ in answers]
    assert statuses[:40] == [200] * 40, statuses
    refused = [(body, retry) for status, body, retry in answers if status == 429]
    assert len(refused) >= 40 and set(statuses) == {200, 429}, statuses
    assert refused[0][0]["error"]["code"] == "rate_limited" and "Retry-After" in refused[0][0]["error"]["message"]
    assert {retry for _, retry in refused} == {"1"}
    time.sleep(0.5)  # gunicorn's access log lines
    assert _service_lines(web_log, "/api/filters") - reached_before == statuses.count(200)
    time.sleep(1.5)
    assert http(f"{proxy}/api/filters")[0] == 200
    time.sleep(5)  # leave the bucket full for whatever runs next


def _search_from(address: str, port: int, body: bytes, content_type: str) -> tuple[float, int]:
    """One search through nginx from a loopback address of our choosing (nginx limits per address): (s, status)."""
    import socket

    request = (f"POST /api/search?k=5 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: "
               f"{content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(address, 0)) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return time.perf_counter() - started, 0
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return time.perf_counter() - started, status


def test_an_abusive_client_costs_honest_shoppers_no_error(platform) -> None:
    """Three shoppers (their own addresses, a search every 0.6 s each: under nginx's 2 a second) beside one abusive
    address that floods, sends slow image_urls and 40 MP photos: the shoppers get no error and their p99 is printed
    against the same shoppers' quiet p99 (docs/service.md, "Limits"); the abuser is refused by nginx (429) and by
    the limits (413)."""
    import contextlib
    import threading
    from urllib.parse import urlparse

    proxy = platform[0]
    port = urlparse(proxy).port
    honest_photo = noise_jpeg(0.1)
    big = io.BytesIO()
    Image.new("RGB", (5000, 8000), (200, 40, 40)).save(big, "PNG")
    huge_png = big.getvalue()  # 40 MP in 100 KB: refused from its header, before decoding (MAX_DECODED_PIXELS)

    stack = contextlib.ExitStack()
    slow_url = json.dumps({"image_url": stack.enter_context(slow_image_server(honest_photo, 4))}).encode()

    def shoppers(seconds: float) -> list[tuple[float, int]]:
        results: list[tuple[float, int]] = []
        until = time.monotonic() + seconds

        def shopper(address: str) -> None:
            while time.monotonic() < until:
                results.append(_search_from(address, port, *multipart("image", "p.jpg", honest_photo)))
                time.sleep(0.6)

        threads = [threading.Thread(target=shopper, args=(f"127.0.0.{n}",)) for n in (2, 3, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    time.sleep(5)  # earlier tests' requests: every bucket full again
    quiet = shoppers(20)
    abuse: list[int] = []
    stop_abuse = threading.Event()

    def abuser(kind: int) -> None:
        while not stop_abuse.is_set():
            if kind == 0:  # a flood of searches
                abuse.append(_search_from("127.0.0.9", port, *multipart("image", "p.jpg", honest_photo))[1])
            elif kind == 1:  # slow image_urls
                abuse.append(_search_from("127.0.0.9", port, slow_url, "application/json")[1])
            else:  # 40 MP photos
                abuse.append(_search_from("127.0.0.9", port, *multipart("image", "p.png", huge_png))[1])

    threads = [threading.Thread(target=abuser, args=(n % 3,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        loud = shoppers(20)
    finally:
        stop_abuse.set()
        for thread in threads:
            thread.join()
        stack.close()
    quiet_p99, loud_p99 = (float(np.percentile([s for s, _ in r], 99)) for r in (quiet, loud))
    refused = {status: abuse.count(status) for status in sorted(set(abuse))}
    print(f"\nshoppers quiet: {len(quiet)} searches, p99 {1000 * quiet_p99:.0f} ms; beside the abuser: {len(loud)} "
          f"searches, p99 {1000 * loud_p99:.0f} ms ({loud_p99 / quiet_p99:.2f}x); the abuser's answers: {refused}")
    assert {status for _, status in quiet + loud} == {200}, [status for _, status in quiet + loud]
    assert refused.get(429, 0) > 0 and refused.get(413, 0) > 0  # nginx's rate limit; the decoded-pixel limit
    time.sleep(5)
