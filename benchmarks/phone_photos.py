"""Benchmark phone photos through the service: a 12 MP JPEG against a 224 px photo of the same product, request for
request, on one or more servers (a checkout of the service and a Python environment each), with each server's
boot time and each worker's memory after.

The photos are made from a catalog photo of the index: the 224 px one is that photo; the 12 MP one is it enlarged
to 3024x4032 with a sensor's noise added (so that the JPEG weighs what a phone's does, 3 to 5 MB) and stored
sideways with an EXIF orientation, as a phone held upright saves it. Each round sends every photo to every
server on a new connection (`raw_request`), in an order that alternates, so that the servers share the machine's
noise. Prints p50/p99 per server and photo, the decode stage (Server-Timing), the 12 MP / 224 px ratio (target:
at most 3x), the seconds from starting gunicorn until both workers answered /health, and each worker's private
memory and PSS once the rounds are done (`smaps`).

    git worktree add /tmp/before <commit>   # the service as it was, in an environment from its requirements.txt
    python -m benchmarks.phone_photos --index DIR --server before=/tmp/before:/tmp/venv-before/bin/python \
        --server now=.:/tmp/venv-lean/bin/python [--rounds 40]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, free_port, multipart, raw_request, server_timing, smaps, start_gunicorn, stop
from runtime import artifacts
from runtime.items import read_items
from runtime.layout import ITEMS_FILE

PHONE = (3024, 4032)  # 12 MP, portrait
ORIENTATION = 0x0112


def phone_photo(small: Image.Image, seed: int = 0) -> bytes:
    """The photo as a phone would send it: 12 MP, a sensor's noise, JPEG quality 92, stored sideways + EXIF 6."""
    big = np.asarray(small.convert("RGB").resize(PHONE, Image.BICUBIC), np.float32)
    noise = np.random.default_rng(seed).normal(0, 9, big.shape)
    pixels = np.clip(big + noise, 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    out = io.BytesIO()
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def as_the_page_sends(phone: bytes) -> bytes:
    """The phone photo as the shopper's page sends it: upright, at most 1,024 px, JPEG quality 90."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(phone)))
    img.thumbnail((1024, 1024), Image.BICUBIC)
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def small_photo(small: Image.Image) -> bytes:
    out = io.BytesIO()
    small.convert("RGB").resize((224, 224), Image.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


def parse_server(spec: str) -> tuple[str, tuple[Path, str]]:
    """NAME=APP_DIR:PYTHON -> (NAME, (APP_DIR, PYTHON)); PYTHON defaults to this interpreter."""
    name, _, rest = spec.partition("=")
    app_dir, _, python = rest.partition(":")
    if not name or not app_dir:
        raise SystemExit(f"--server {spec!r}: expected NAME=APP_DIR:PYTHON")
    return name, (Path(app_dir).resolve(), python or sys.executable)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder (or a data dir)")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=APP_DIR:PYTHON",
                        help="a checkout and the interpreter whose gunicorn serves it (repeatable; default: this "
                             "checkout with this interpreter)")
    parser.add_argument("--rounds", type=int, default=40, help="requests per server and photo (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server (default 2)")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    items = read_items(folder / ITEMS_FILE)
    source = Image.open(folder / items[len(items) // 2]["thumbnail"])
    phone = phone_photo(source)
    photos = {"224 px": small_photo(source), "12 MP": phone, "12 MP as the page sends it": as_the_page_sends(phone)}
    apps = dict(parse_server(spec) for spec in args.server) or {"this checkout": (ROOT, sys.executable)}
    times = {(name, photo): [] for name in apps for photo in photos}
    decode_ms = {(name, photo): [] for name in apps for photo in photos}
    memory: dict[str, list[dict[str, float]]] = {}
    boot: dict[str, float] = {}
    servers = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            ports = {}
            for n, (name, (app_dir, python)) in enumerate(apps.items()):
                port = free_port()
                started = time.perf_counter()
                process, pids = start_gunicorn(folder, port, args.workers, Path(scratch) / f"cache{n}",
                                               python=python, app_dir=app_dir)
                boot[name] = time.perf_counter() - started
                servers.append((name, process, pids))
                ports[name] = port
            order = [(name, photo) for name in apps for photo in photos]
            for name, photo in order * 3:  # warm-up: graphs traced, pages faulted in
                raw_request(ports[name], "/api/search?k=10", *multipart("image", "q.jpg", photos[photo]))
            for round_ in range(args.rounds):
                for name, photo in order if round_ % 2 == 0 else order[::-1]:
                    reply = raw_request(ports[name], "/api/search?k=10", *multipart("image", "q.jpg", photos[photo]))
                    if reply.status != 200:
                        raise RuntimeError(f"{name} answered {reply.status}: {reply.body[:300]!r}")
                    times[(name, photo)].append(1000 * reply.seconds)
                    decode_ms[(name, photo)].append(server_timing(reply.headers.get("Server-Timing", ""))
                                                    .get("decode", float("nan")))
            for name, _, pids in servers:
                memory[name] = [smaps(pid) for pid in sorted(pids)]
        finally:
            for _, process, _ in servers:
                stop(process)

    print(f"\nphone_photos: {folder.name} ({len(items)} items), {args.workers} workers per server, "
          f"{args.rounds} rounds; photos: 224 px {len(photos['224 px']) / 1024:.0f} KB, "
          f"12 MP {len(phone) / 2**20:.1f} MB, as the page sends it "
          f"{len(photos['12 MP as the page sends it']) / 1024:.0f} KB")
    print(f"{'server':30s} {'photo':26s} {'p50 ms':>8s} {'p99 ms':>8s} {'decode p50':>11s}")
    for (name, photo), seconds in times.items():
        print(f"{name[:30]:30s} {photo:26s} {np.percentile(seconds, 50):8.1f} {np.percentile(seconds, 99):8.1f} "
              f"{np.nanpercentile(decode_ms[(name, photo)], 50):11.1f}")
    for name in apps:
        ratio = np.percentile(times[(name, "12 MP")], 50) / np.percentile(times[(name, "224 px")], 50)
        workers = ", ".join(f"private {m['private']:.0f} MiB / PSS {m['pss']:.0f} MiB" for m in memory[name])
        print(f"{name[:30]:30s} 12 MP / 224 px p50: {ratio:.1f}x (target <= 3x); boot {boot[name]:.1f} s; "
              f"workers: {workers}")


if __name__ == "__main__":
    main()
