"""Serving memory with 1, 2 and 4 gunicorn workers on one index: are the index pages shared between workers?

For each worker count it starts gunicorn on the index folder, waits until every worker has loaded it, sends
"more like this" queries (spread over the workers) so that the pages a query touches are resident, then
reads each worker's /proc/PID/smaps: resident (RSS) and proportional (PSS: a shared page counts 1/n in each
of the n processes mapping it) memory of index.ann and vectors.npy, and the worker's private memory. Shared
index pages show as PSS(index.ann) per worker ≈ file size / workers. Writes Markdown and JSON to --out.

    python scripts/bench_serving_memory.py --index /tmp/syn1m/index/current --workers 1,2,4 --tag 1m
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_service import start_gunicorn, timed  # noqa: E402

from pipeline import artifacts  # noqa: E402

FILES = (artifacts.INDEX_FILE, artifacts.VECTORS_FILE)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smaps(pid: int) -> dict[str, float]:
    """MiB of RSS and PSS per index file mapped by `pid`, plus the process's totals and private anonymous memory."""
    out = {f"{kind}_{name}": 0.0 for name in FILES for kind in ("rss", "pss")}
    current = None
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            fields = line.split()
            if not line[0].isupper():  # a mapping's header: address perms offset dev inode [path]
                current = Path(fields[5]).name if len(fields) > 5 and Path(fields[5]).name in FILES else None
            elif current and fields[0] in ("Rss:", "Pss:"):
                out[f"{fields[0][:-1].lower()}_{current}"] += int(fields[1]) / 1024
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            fields = line.split()
            if fields[0] in ("Rss:", "Pss:", "Pss_Anon:", "Pss_File:"):
                out[fields[0][:-1].lower()] = int(fields[1]) / 1024
    return out


def wait_for_workers(port: int, workers: int, deadline_s: float) -> set[int]:
    """Ask /health until `workers` distinct worker pids have answered 200 (each has loaded the index)."""
    import urllib.request

    seen: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                seen.add(int(json.loads(response.read())["worker"]))
        except OSError:
            time.sleep(0.5)
    if len(seen) < workers:
        raise SystemExit(f"only {len(seen)} of {workers} workers loaded the index within {deadline_s:.0f} s")
    return seen


def product_ids(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` random product ids of the index (read from items.jsonl)."""
    with open(folder / artifacts.ITEMS_FILE, encoding="utf-8") as fh:
        lines = fh.readlines()
    rng = random.Random(seed)
    return [json.loads(lines[rng.randrange(len(lines))])["product_id"] for _ in range(count)]


def measure(folder: Path, workers: int, queries: list[str]) -> list[dict]:
    """Start gunicorn with `workers`, query it, and return each worker's memory figures."""
    port = free_port()
    process = start_gunicorn(folder, port, workers, str(ROOT / "data" / ".cache"), deadline_s=900)
    try:
        pids = wait_for_workers(port, workers, 900)
        failures = sum(timed(f"http://127.0.0.1:{port}/api/products/{pid}/similar?k=10")[1] != 200
                       for pid in queries)
        if failures:
            raise SystemExit(f"{failures} of {len(queries)} queries failed")
        return [{"workers": workers, "pid": pid, **{k: round(v, 1) for k, v in smaps(pid).items()}}
                for pid in sorted(pids)]
    finally:
        process.terminate()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    """Run the measurement for each worker count and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder (DIR/index/current)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--queries", type=int, default=2000, help="'more like this' queries per worker count")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    manifest = json.loads((folder / artifacts.MANIFEST).read_text())
    sizes = {name: (folder / name).stat().st_size / 2**20 for name in FILES}
    queries = product_ids(folder, args.queries)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        new = measure(folder, workers, queries)
        for r in new:
            print(f"{workers} workers, pid {r['pid']}: index.ann RSS {r['rss_index.ann']:.1f} MiB, PSS "
                  f"{r['pss_index.ann']:.1f} (size/workers {sizes['index.ann'] / workers:.1f}); vectors.npy PSS "
                  f"{r['pss_vectors.npy']:.1f}; worker PSS {r['pss']:.1f}, anonymous {r['pss_anon']:.1f}", flush=True)
        rows += new
    stem = f"serving-memory-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}"
    command = "python scripts/bench_serving_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "date": date.today().isoformat(),
                                                       "count": manifest["count"], "dim": manifest["dim"],
                                                       "sizes_mib": sizes, "rows": rows}, indent=1))
    lines = [f"# Serving memory, {date.today().isoformat()}", "",
             f"`{command}`: {manifest['count']:,} items, {manifest['dim']}-d, index.ann {sizes['index.ann']:.1f} MiB, "
             f"vectors.npy {sizes['vectors.npy']:.1f} MiB; {args.queries} 'more like this' queries per run. MiB.", "",
             "| workers | worker | index.ann RSS | index.ann PSS | size / workers | vectors.npy PSS | worker PSS "
             "| of it anonymous |", "|" + "---|" * 8]
    lines += [f"| {r['workers']} | {r['pid']} | {r['rss_index.ann']} | {r['pss_index.ann']} | "
              f"{sizes['index.ann'] / r['workers']:.1f} | {r['pss_vectors.npy']} | {r['pss']} | {r['pss_anon']} |"
              for r in rows]
    lines += ["", "Total PSS of all workers: " + "; ".join(
        f"{w} worker{'s' if w > 1 else ''} {sum(r['pss'] for r in rows if r['workers'] == w) / 1024:.1f} GiB"
        for w in dict.fromkeys(r["workers"] for r in rows)) + "."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.md and .json")


if __name__ == "__main__":
    main()
