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
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, free_port, multipart, percentiles, raw_request, start_gunicorn, stop
from pipeline.index import DEFAULT_TREES
from runtime import storage
from runtime.layout import MANIFEST, Layout

CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def stage(data: Path, trees: int, limit_gib: float | None,
          target_recall: float | None = None) -> tuple[float, dict[str, float], dict]:
    """Run the index stage in a fresh process; return (seconds, peak memory in MiB, the new manifest).

    Peak memory: `rss` as the kernel reports it (ru_maxrss: it counts the pages of index.ann that the process has
    touched through its memory map, which the kernel may drop and read again), `anon` (its private memory, sampled
    every 0.2 s: what no page cache can give back), and with `limit_gib`, `cgroup`: the most the process was
    charged while it ran in a memory cgroup of that limit, page cache included, so that it ran within it.
    """
    command = [sys.executable, "-m", "pipeline", "index", "--data-dir", str(data), "--trees", str(trees)]
    if target_recall is not None:
        command += ["--target-recall", str(target_recall)]
    group = _memory_group(limit_gib) if limit_gib else None
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               preexec_fn=(lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
                               if group else None)
    anon = [0.0]
    sampler = threading.Thread(target=_sample_anon, args=(process.pid, anon), daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        sampler.join()
        peaks = {"rss": usage.ru_maxrss / 1024, "anon": anon[0]}
        if group:
            peaks["cgroup"] = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if group:
            group.rmdir()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}"
                           + (f" (in a {limit_gib} GiB memory cgroup)" if group else ""))
    return seconds, peaks, storage.read_json(Layout(data).current_index / MANIFEST)


def cgroups_available() -> bool:
    """Whether this process can make a memory cgroup (root, the cgroup v1 memory controller mounted writable)."""
    probe = CGROUP_V1 / f"index-scale-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def _memory_group(limit_gib: float) -> Path:
    """A new cgroup (v1 memory controller) limited to `limit_gib`: needs root, as on this machine."""
    group = CGROUP_V1 / f"index-scale-{os.getpid()}"
    if not CGROUP_V1.is_dir():
        raise SystemExit(f"--memory-limit needs the cgroup v1 memory controller at {CGROUP_V1}")
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(int(limit_gib * 2**30)))
    return group


def _sample_anon(pid: int, peak: list[float]) -> None:
    """Keep the largest RssAnon (MiB) of a running process in peak[0], until it exits."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            peak[0] = max(peak[0], int(fields["RssAnon"].split()[0]) / 1024)
        except (OSError, KeyError, ValueError):
            return
        if fields.get("State", "").strip().startswith("Z"):
            return
        time.sleep(0.2)


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
    parser.add_argument("--reuse", action="store_true",
                        help="index the data dirs --keep left in --work again, from scratch")
    parser.add_argument("--trees", type=int, default=DEFAULT_TREES, help="Annoy trees of the index stage")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="recall@10 the stage's search_k must reach (default: the stage's)")
    parser.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                        help="run the stage in a memory cgroup of this many GiB (root, cgroup v1)")
    args = parser.parse_args(argv)
    from scripts import make_synthetic_data_dir as synthetic
    photo = next((Layout(args.extractor_from).images).rglob("*.jpg")).read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            data = (args.work if args.keep and args.work else Path(tmp)) / f"n{n}"
            started = time.perf_counter()
            if args.reuse and (data / "embeddings").is_dir():
                shutil.rmtree(Layout(data).index, ignore_errors=True)  # a build from scratch, not "nothing changed"
            else:
                synthetic.make(data, n, args.extractor_from)
            made = time.perf_counter() - started
            seconds, peaks, manifest = stage(data, args.trees, args.memory_limit, args.target_recall)
            near = manifest.get("near_duplicates", {})
            memory = ", ".join(f"{name} {mib / 1024:.2f} GiB" for name, mib in peaks.items())
            print(f"N={n:,}: data dir ready in {made:.0f} s; index stage {seconds:.0f} s, peak memory: {memory} "
                  f"(Annoy build {manifest['build_seconds']:.0f} s, near-duplicates {near.get('seconds', 0):.0f} s, "
                  f"{near.get('threshold')}, {manifest['duplicate_groups']} groups), index.ann "
                  f"{manifest['index_bytes'] / 2**30:.2f} GiB, search_k {manifest['search_k']}", flush=True)
            timings = serve(data, args.workers, args.requests, photo)
            print(f"  service ({args.workers} worker(s), loaded in {timings['load'][0]:.0f} s): search "
                  f"{percentiles(timings['search'])}; similar {percentiles(timings['similar'])}", flush=True)
            files = {p.name: p.stat().st_size for p in Layout(data).current_index.resolve().iterdir() if p.is_file()}
            rows.append((n, manifest["dim"], seconds, peaks, manifest["build_seconds"], near.get("seconds", 0),
                         files, np.percentile(timings["search"], 50) * 1000,
                         np.percentile(timings["similar"], 50) * 1000, timings["load"][0]))
            if not args.keep:
                shutil.rmtree(data)  # before the next size: 10M x 256-d takes tens of GB
    limit = f", in a {args.memory_limit} GiB memory cgroup" if args.memory_limit else ""
    recall = f", search_k for recall@10 >= {args.target_recall}" if args.target_recall else ""
    print(f"\nindex_scale: synthetic clustered vectors, {ROOT.name} checkout, index stage in a fresh process with "
          f"{args.trees} trees{limit}{recall}, {args.workers} gunicorn worker(s), {args.requests} requests of each "
          "kind")
    print("| products | dim | index stage | peak RSS | peak anonymous | peak cgroup | Annoy build | near-duplicates | "
          "index.ann | search p50 | similar p50 | worker load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, dim, seconds, peaks, build, near_s, files, search, similar, load in rows:
        cgroup = f"{peaks['cgroup'] / 1024:.2f} GiB" if "cgroup" in peaks else "-"
        print(f"| {n:,} | {dim} | {seconds / 60:.1f} min | {peaks['rss'] / 1024:.2f} GiB | "
              f"{peaks['anon'] / 1024:.2f} GiB | {cgroup} | {build:.0f} s | {near_s:.0f} s | "
              f"{files.get('index.ann', 0) / 2**30:.2f} GiB | {search:.1f} ms | {similar:.1f} ms | {load:.0f} s |")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stage and remove its cgroup on the way out
    main()
