"""The index stage and the service at 1M and 10M products: the stage's time and peak RSS, and query p50.

For each N: `scripts/make_synthetic_data_dir.py` writes a data dir of N clustered vectors (the dimension and the
extractor of `--extractor-from`, a real data dir, so the service answers photos), `python -m pipeline index`
runs on it in a fresh process (seconds, and the peak RSS the kernel reports for it; the manifest's Annoy build,
near-duplicate and file figures), then gunicorn serves it with `--workers` workers and `--requests` requests of
each kind go one at a time on new connections: POST /api/search with a real photo, and GET
/api/products/<id>/similar of random products; p50 and p99 of each. The data dir is deleted afterwards unless
`--keep`: at 10M it is tens of GB.

    python -m benchmarks.index_scale --sizes 1000000 --extractor-from /tmp/fs-mp --work /tmp/scale
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, free_port, load_script, multipart, percentiles, raw_request, start_gunicorn, stop
from benchmarks.feature_memory import peak_mib
from runtime import storage
from runtime.layout import MANIFEST, Layout


def stage(data: Path) -> tuple[float, float, dict]:
    """Run the index stage in a fresh process; return (seconds, peak RSS MiB, the new manifest)."""
    rss, seconds = peak_mib([sys.executable, "-m", "pipeline", "index", "--data-dir", str(data)])
    return seconds, rss, storage.read_json(Layout(data).current_index / MANIFEST)


def serve(data: Path, workers: int, requests: int, photo: bytes, seed: int = 0) -> dict[str, list[float]]:
    """Serve the index with gunicorn and time `requests` image searches and "more like this" queries."""
    port = free_port()
    index = Layout(data).current_index
    started = time.perf_counter()
    process, _ = start_gunicorn(index, port, workers, data / "serving-cache", deadline_s=3600)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    manifest = storage.read_json(index / MANIFEST)
    out: dict[str, list[float]] = {"search": [], "similar": [], "load": [load_s]}
    try:
        for _ in range(requests):
            body, content_type = multipart("image", "q.jpg", photo)
            reply = raw_request(port, "/api/search?k=10", body, content_type)
            assert reply.status == 200, reply.body[:300]
            out["search"].append(reply.seconds)
            product = f"S{int(rng.integers(manifest['products'])):07d}"
            reply = raw_request(port, f"/api/products/{product}/similar?k=10")
            assert reply.status == 200, reply.body[:300]
            out["similar"].append(reply.seconds)
    finally:
        stop(process)
    return out


def main(argv: list[str] | None = None) -> None:
    """Build, index and serve each size; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000", help="products, comma-separated")
    parser.add_argument("--extractor-from", type=Path, required=True, help="a real data dir (its extractor, dim)")
    parser.add_argument("--work", type=Path, default=None, help="where the data dirs go (default: a temp folder)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (in --work)")
    args = parser.parse_args(argv)
    synthetic = load_script("make_synthetic_data_dir")
    photo = next((Layout(args.extractor_from).images).rglob("*.jpg")).read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            data = (args.work if args.keep and args.work else Path(tmp)) / f"n{n}"
            started = time.perf_counter()
            synthetic.make(data, n, args.extractor_from)
            made = time.perf_counter() - started
            seconds, rss, manifest = stage(data)
            near = manifest.get("near_duplicates", {})
            print(f"N={n:,}: data dir written in {made:.0f} s; index stage {seconds:.0f} s, peak RSS {rss:.0f} MiB "
                  f"(Annoy build {manifest['build_seconds']:.0f} s, near-duplicates {near.get('seconds', 0):.0f} s, "
                  f"{near.get('threshold')}, {manifest['duplicate_groups']} groups), index.ann "
                  f"{manifest['index_bytes'] / 2**30:.2f} GiB, search_k {manifest['search_k']}", flush=True)
            timings = serve(data, args.workers, args.requests, photo)
            print(f"  service ({args.workers} worker(s), loaded in {timings['load'][0]:.0f} s): search "
                  f"{percentiles(timings['search'])}; similar {percentiles(timings['similar'])}", flush=True)
            files = {p.name: p.stat().st_size for p in Layout(data).current_index.resolve().iterdir() if p.is_file()}
            rows.append((n, manifest["dim"], seconds, rss, manifest["build_seconds"], near.get("seconds", 0),
                         files, np.percentile(timings["search"], 50) * 1000,
                         np.percentile(timings["similar"], 50) * 1000, timings["load"][0]))
            if not args.keep:
                shutil.rmtree(data)  # before the next size: 10M x 256-d takes tens of GB
    print(f"\nindex_scale: synthetic clustered vectors, {ROOT.name} checkout, index stage in a fresh process, "
          f"{args.workers} gunicorn worker(s), {args.requests} requests of each kind")
    print("| products | dim | index stage | peak RSS | Annoy build | near-duplicates | index.ann | vectors.npy | "
          "search p50 | similar p50 | worker load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, dim, seconds, rss, build, near_s, files, search, similar, load in rows:
        print(f"| {n:,} | {dim} | {seconds / 60:.1f} min | {rss / 1024:.2f} GiB | {build:.0f} s | {near_s:.0f} s | "
              f"{files.get('index.ann', 0) / 2**30:.2f} GiB | {files.get('vectors.npy', 0) / 2**30:.2f} GiB | "
              f"{search:.1f} ms | {similar:.1f} ms | {load:.0f} s |")


if __name__ == "__main__":
    main()
