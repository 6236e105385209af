"""Benchmark the service as deployed: gunicorn workers over HTTP, compared with one bare encoder pass.

Prints, from one run: p50/p99 of POST /api/search (each request with its own random multipart boundary, as a
browser sends) and of JPEG decode + the bare extractor on the same image (goal: search p50 <= decode + encoder
+ 2 ms), p50/p99 of GET /api/products/<id>/similar (goal: p50 <= 5 ms), and a concurrent load of 2x the cores
for --seconds (goal: 0 errors). With --compare DIR, a second gunicorn runs the service of another checkout (say
`git worktree add /tmp/before HEAD~3`) over the same index, and the sequential requests alternate between the
two, so that before and after are measured side by side.

    python -m benchmarks.service_latency --index data/demo/index/current [--compare /tmp/before]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, free_port, multipart, percentiles, start_gunicorn, stop, timed
from runtime import artifacts
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_DIR, Layout
from runtime.preprocess import prepare_array
from service.uploads import decode


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Layout(ROOT / "data" / "demo").current_index,
                        help="an index folder (default: make demo's)")
    parser.add_argument("--image", type=Path, default=None, help="query photo (default: one of the index's images)")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per endpoint")
    parser.add_argument("--seconds", type=float, default=30, help="duration of the concurrent load")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout whose service is measured alongside, request for request")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    items = artifacts.read_items(folder)
    image_path = args.image or folder / items[len(items) // 2]["thumbnail"]
    data = image_path.read_bytes()
    cores = os.cpu_count() or 1

    extractor = load_extractor(folder / EXTRACTOR_DIR)
    bare, decoded = [], []
    for i in range(args.requests + 5):
        started = time.perf_counter()
        pixels = decode(data, {"MAX_PIXELS": 40_000_000})
        ready = time.perf_counter()
        extractor.embed(prepare_array(pixels, extractor.input_size)[None])
        if i >= 5:  # the first calls trace the graph
            bare.append(time.perf_counter() - ready)
            decoded.append(time.perf_counter() - started)
    del extractor

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    other = f"http://127.0.0.1:{free_port()}" if args.compare else None
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as other_cache:
        server, _ = start_gunicorn(folder, port, args.workers, cache)
        compared = start_gunicorn(folder, int(other.rsplit(":", 1)[1]), args.workers, other_cache,
                                  app_dir=args.compare)[0] if other else None
        try:
            bases = [base, other] if other else [base]
            for _ in range(10):
                for url in bases:
                    timed(f"{url}/api/search?k=10", *multipart("image", "q.jpg", data))
            times: dict[str, list[float]] = {url: [] for url in bases}
            for _ in range(args.requests):
                for url in bases:
                    times[url].append(timed(f"{url}/api/search?k=10", *multipart("image", "q.jpg", data))[0])
            search = times[base]
            body, content_type = multipart("image", "q.jpg", data)
            product_ids = [items[i]["product_id"] for i in np.random.default_rng(0).integers(0, len(items), 50)]
            similar = [timed(f"{base}/api/products/{urllib.request.quote(product_ids[i % 50])}/similar?k=10")[0]
                       for i in range(args.requests)]
            load = {"search": [], "errors": 0, "requests": 0}
            lock, until = threading.Lock(), time.monotonic() + args.seconds

            def client(n: int) -> None:
                while time.monotonic() < until:
                    if n % 2:
                        seconds, status = timed(f"{base}/api/search?k=10", body, content_type)
                    else:
                        seconds, status = timed(f"{base}/api/products/{product_ids[n]}/similar?k=10")
                    with lock:
                        load["requests"] += 1
                        load["errors"] += status != 200
                        if n % 2:
                            load["search"].append(seconds)

            threads = [threading.Thread(target=client, args=(n,)) for n in range(2 * cores)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            health = json.loads(urllib.request.urlopen(f"{base}/health", timeout=10).read())
        finally:
            stop(server)
            if compared:
                stop(compared)

    ratio = np.percentile(search, 50) / np.percentile(bare, 50)
    ratio_decoded = np.percentile(search, 50) / np.percentile(decoded, 50)
    print(f"\nservice_latency: index {health['version']} ({health['items']} items, {health['encoder']}), "
          f"{args.workers} gunicorn workers, {cores} cores, image {image_path.name}")
    print(f"bare encoder pass (in process)   {percentiles(bare)}")
    print(f"JPEG decode + encoder pass       {percentiles(decoded)}")
    print(f"POST /api/search (HTTP)          {percentiles(search)}")
    if other:
        print(f"  the same, {str(args.compare)[:14]:14s}  {percentiles(times[other])}   (alternating with the above)")
    overhead = 1000 * (np.percentile(search, 50) - np.percentile(decoded, 50))
    print(f"  search p50 - (decode+encoder)  {overhead:8.2f} ms (goal <= 2 ms)")
    print(f"  search p50 / encoder p50       {ratio:8.2f}x")
    print(f"  search p50 / (decode+encoder)  {ratio_decoded:8.2f}x")
    print(f"GET /api/products/<id>/similar   {percentiles(similar)}   (goal p50 <= 5 ms)")
    print(f"load: {2 * cores} concurrent clients for {args.seconds:.0f} s: {load['requests']} requests, "
          f"{load['requests'] / args.seconds:.1f}/s, errors {load['errors']} (goal 0); "
          f"search under load {percentiles(load['search'])}")


if __name__ == "__main__":
    main()
