"""Benchmark the service as deployed: gunicorn workers over HTTP, against a bare encoder pass in the same run.

The sequential phase goes in rounds. Each round makes one bare pass in this process (JPEG decode + the extractor,
with a worker's encoder threads) and then one POST /api/search to each server, every request on a new connection
with its own random multipart boundary (as a browser sends). The bare pass and the requests thus see the same
machine: a pass measured back to back before the servers start runs on warm caches that no request finds (it is
printed too). Requests are sent by a lean client (`raw_request`: one sendall, recv until close), so that the time
is the server's and not urllib's Python; a urllib request per round is printed for comparison. The service's
Server-Timing header splits each request into its stages and `app` (inside Flask); the rest is HTTP and gunicorn.

Prints p50/p99 of POST /api/search and of decode + encoder (goal: search p50 <= decode + encoder + 2 ms), the
stage breakdown, p50/p99 of GET /api/products/<id>/similar (goal: p50 <= 5 ms), and a concurrent load of 2x the
cores for --seconds (goal: 0 errors). With --compare DIR, a second gunicorn runs the service of another checkout
(say `git worktree add /tmp/before HEAD~3`) over the same index, in the same rounds. With --floor, a third runs
`benchmarks/floor_app.py` (upload, decode, encoder, nothing else) with the same gunicorn settings, in the same
rounds: what any Flask app pays here, and so what the service itself adds.

    python -m benchmarks.service_latency --index data/demo/index/current [--compare /tmp/before] [--floor]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    free_port,
    multipart,
    percentiles,
    raw_request,
    server_timing,
    start_gunicorn,
    stop,
    timed,
)
from benchmarks.common import (
    health as service_health,
)
from runtime import artifacts
from runtime.extractor import load_extractor
from runtime.items import read_items
from runtime.layout import EXTRACTOR_DIR, ITEMS_FILE, Layout
from service.config import encoder_threads, load_config
from service.uploads import decode

LIMITS = load_config({}, environ={})  # the service's default limits, for decoding as a worker does


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
    parser.add_argument("--floor", action="store_true",
                        help="also measure benchmarks/floor_app.py (decode + encoder behind gunicorn and Flask)")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    items = read_items(folder / ITEMS_FILE)
    image_path = args.image or folder / items[len(items) // 2]["thumbnail"]
    data = image_path.read_bytes()
    cores = os.cpu_count() or 1

    threads = encoder_threads({"ENCODER_THREADS": 0}, {"WEB_CONCURRENCY": str(args.workers)})
    extractor = load_extractor(folder / EXTRACTOR_DIR, threads)

    def bare_pass() -> tuple[float, float]:
        """Seconds of (decode + encoder, encoder alone) for the query photo, as a worker runs them."""
        started = time.perf_counter()
        pixels = decode(data, LIMITS, extractor.input_size).pixels
        ready = time.perf_counter()
        extractor.embed(pixels[None])
        return time.perf_counter() - started, time.perf_counter() - ready

    for _ in range(5):  # the first calls trace the graph
        bare_pass()
    back_to_back = [bare_pass()[0] for _ in range(args.requests)]

    ports = {"service": args.port or free_port()}
    if args.compare:
        ports["compare"] = free_port()
    if args.floor:
        ports["floor"] = free_port()
    urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    base, other, floor = urls["service"], urls.get("compare"), urls.get("floor")
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as other_cache:
        server, _ = start_gunicorn(folder, ports["service"], args.workers, cache)
        extra = []
        try:
            if other:
                extra.append(start_gunicorn(folder, ports["compare"], args.workers, other_cache,
                                            app_dir=args.compare)[0])
            if floor:
                extra.append(start_gunicorn(folder, ports["floor"], args.workers, cache,
                                            app="benchmarks.floor_app:application")[0])
            bases = list(urls.values())
            for _ in range(10):
                for port_ in ports.values():
                    raw_request(port_, "/api/search?k=10", *multipart("image", "q.jpg", data))
            decoded, bare = [], []
            times: dict[str, list[float]] = {url: [] for url in bases}
            urllib_times, stages = [], []
            for round_ in range(args.requests):
                both, alone = bare_pass()
                decoded.append(both)
                bare.append(alone)
                order = list(zip(bases, ports.values(), strict=True))
                for url, port_ in order if round_ % 2 == 0 else order[::-1]:  # neither server always goes first
                    reply = raw_request(port_, "/api/search?k=10", *multipart("image", "q.jpg", data))
                    if reply.status != 200:
                        raise RuntimeError(f"{url}/api/search answered {reply.status}: {reply.body[:300]!r}")
                    times[url].append(reply.seconds)
                    if url == base:
                        stages.append({**server_timing(reply.headers.get("Server-Timing", "")),
                                       "client": 1000 * reply.seconds})
                urllib_times.append(timed(f"{base}/api/search?k=10", *multipart("image", "q.jpg", data))[0])
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

            clients = [threading.Thread(target=client, args=(n,)) for n in range(2 * cores)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            health = service_health(base, timeout=10)
        finally:
            for process in [server, *extra]:
                stop(process)

    print(f"\nservice_latency: index {health['version']} ({health['items']} items, {health['encoder']}), "
          f"{args.workers} gunicorn workers, {cores} cores, {threads} encoder thread(s), image {image_path.name}")
    print(f"bare encoder pass, in the rounds  {percentiles(bare)}")
    print(f"JPEG decode + encoder, in rounds  {percentiles(decoded)}")
    print(f"  the same, back to back before   {percentiles(back_to_back)}   (warm caches: not a request's)")
    print(f"POST /api/search (HTTP)           {percentiles(search)}")
    if other:
        print(f"  the same, {args.compare.name[:20]:20s}  {percentiles(times[other])}   (--compare, same rounds)")
    print(f"  the same, sent by urllib        {percentiles(urllib_times)}   (client Python included)")
    overhead = 1000 * (np.percentile(search, 50) - np.percentile(decoded, 50))
    print(f"  search p50 - (decode+encoder)   {overhead:8.2f} ms (goal <= 2 ms)")
    if floor:
        floor_p50 = np.percentile(times[floor], 50)
        print(f"floor app (decode + encoder)      {percentiles(times[floor])}   (in the same rounds)")
        print(f"  floor p50 - (decode+encoder)    {1000 * (floor_p50 - np.percentile(decoded, 50)):8.2f} ms "
              "(gunicorn, Flask and the kernel, for any app)")
        print(f"  search p50 - floor p50          {1000 * (np.percentile(search, 50) - floor_p50):8.2f} ms "
              "(what the service adds)")
    print(f"  search p50 / (decode+encoder)   {np.percentile(search, 50) / np.percentile(decoded, 50):8.2f}x")
    if stages and "app" in stages[0]:
        p50 = {name: float(np.median([row[name] for row in stages])) for name in stages[0]}
        named = ", ".join(f"{name} {ms:.2f}" for name, ms in p50.items() if name not in ("app", "client"))
        rest = float(np.median([row["app"] - sum(v for n, v in row.items() if n not in ("app", "client"))
                                for row in stages]))
        http = float(np.median([row["client"] - row["app"] for row in stages]))
        print(f"  Server-Timing p50 (ms): {named}; Flask and JSON {rest:.2f}; HTTP and gunicorn {http:.2f}")
    print(f"GET /api/products/<id>/similar   {percentiles(similar)}   (goal p50 <= 5 ms)")
    print(f"load: {2 * cores} concurrent clients for {args.seconds:.0f} s: {load['requests']} requests, "
          f"{load['requests'] / args.seconds:.1f}/s, errors {load['errors']} (goal 0); "
          f"search under load {percentiles(load['search'])}")


if __name__ == "__main__":
    main()
