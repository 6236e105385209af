"""Memory of gunicorn workers serving one index: shared index pages, and what each worker holds privately.

For each worker count (and each service set-up, side by side in one run) it starts gunicorn on the index
folder, waits until every worker has loaded it, sends "more like this" queries (spread over the workers) so
that the pages a query touches are resident, then reads each worker's /proc/PID/smaps: resident (RSS) and
proportional (PSS: a shared page counts 1/n in each of the n processes mapping it) memory of index.ann (and of
vectors.npy, for an index of format 2 that has one), the worker's private memory (pages no other process maps: its
own cost) and its anonymous PSS.
Shared index pages show as PSS(index.ann) per worker ~ file size / workers. Writes Markdown and JSON to --out.

    python -m benchmarks.worker_memory --index /tmp/syn1m/index/current --workers 1,2,4 --tag 1m
    # a serving-only environment running an unpacked bundle, next to this checkout in the full environment:
    python -m benchmarks.worker_memory --index DIR --workers 2 --setup full=.venv/bin/python:. \\
        --setup serving=/tmp/serving/bin/python:/tmp/bundle
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import date
from pathlib import Path

from benchmarks.common import ROOT, free_port, smaps, start_gunicorn, stop, timed
from runtime import artifacts
from runtime.layout import INDEX_FILE, ITEMS_FILE, MANIFEST, VECTORS_FILE

FILES = (INDEX_FILE, VECTORS_FILE)


def product_ids(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` random product ids of the index (read from items.jsonl)."""
    with open(folder / ITEMS_FILE, encoding="utf-8") as fh:
        lines = fh.readlines()
    rng = random.Random(seed)
    return [json.loads(lines[rng.randrange(len(lines))])["product_id"] for _ in range(count)]


def measure(folder: Path, workers: int, queries: list[str], python: str, app_dir: Path, files: list[str]
            ) -> list[dict]:
    """Start gunicorn with `workers`, query it, and return each worker's memory figures."""
    port = free_port()
    process, pids = start_gunicorn(folder, port, workers, ROOT / "data" / ".cache", deadline_s=900, python=python,
                                   app_dir=app_dir)
    try:
        failures = sum(timed(f"http://127.0.0.1:{port}/api/products/{pid}/similar?k=10")[1] != 200
                       for pid in queries)
        if failures:
            raise SystemExit(f"{failures} of {len(queries)} queries failed")
        return [{"workers": workers, "pid": pid, **{k: round(v, 1) for k, v in smaps(pid, files).items()}}
                for pid in sorted(pids)]
    finally:
        stop(process, timeout=60)


def parse_setup(text: str) -> tuple[str, str, Path]:
    """`NAME=PYTHON:APP_DIR` -> (name, interpreter, folder with application.py)."""
    name, sep, rest = text.partition("=")
    python, sep2, app_dir = rest.rpartition(":")
    if not (sep and sep2 and name and python):
        raise argparse.ArgumentTypeError(f"expected NAME=PYTHON:APP_DIR, got {text!r}")
    return name, python, Path(app_dir).resolve()


def main(argv: list[str] | None = None) -> None:
    """Run the measurement for each worker count and set-up, and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder (DIR/index/current)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--queries", type=int, default=2000, help="'more like this' queries per run")
    parser.add_argument("--setup", type=parse_setup, action="append", default=[],
                        help="NAME=PYTHON:APP_DIR, repeatable (default: this interpreter and checkout)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    setups = args.setup or [("this", sys.executable, ROOT)]
    folder = artifacts.resolve_index(args.index)
    manifest = json.loads((folder / MANIFEST).read_text())
    files = [name for name in FILES if (folder / name).is_file()]  # format 3 keeps its vectors in index.ann
    sizes = {name: (folder / name).stat().st_size / 2**20 for name in files}
    queries = product_ids(folder, args.queries)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for name, python, app_dir in setups:
            for r in measure(folder, workers, queries, python, app_dir, files):
                r["setup"] = name
                print(f"{name}: {workers} workers, pid {r['pid']}: private {r['private']:.1f} MiB, PSS {r['pss']:.1f} "
                      f"(anonymous {r['pss_anon']:.1f}); index.ann RSS {r['rss_index.ann']:.1f}, PSS "
                      f"{r['pss_index.ann']:.1f} (size/workers {sizes['index.ann'] / workers:.1f}); vectors.npy PSS "
                      f"{r.get('pss_vectors.npy', '-')}", flush=True)
                rows.append(r)
    stem = f"serving-memory-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}"
    command = "python -m benchmarks.worker_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "date": date.today().isoformat(),
                                                       "count": manifest["count"], "dim": manifest["dim"],
                                                       "sizes_mib": sizes, "rows": rows}, indent=1))
    lines = [f"# Serving memory, {date.today().isoformat()}", "",
             f"`{command}`: {manifest['count']:,} items, {manifest['dim']}-d, index.ann {sizes['index.ann']:.1f} MiB, "
             f"vectors.npy {sizes.get('vectors.npy', 0):.1f} MiB; {args.queries} 'more like this' queries per run. "
             "MiB.", "",
             "| set-up | workers | worker | private | index.ann RSS | index.ann PSS | size / workers | vectors.npy PSS "
             "| worker PSS | of it anonymous |", "|" + "---|" * 10]
    lines += [f"| {r['setup']} | {r['workers']} | {r['pid']} | {r['private']} | {r['rss_index.ann']} | "
              f"{r['pss_index.ann']} | {sizes['index.ann'] / r['workers']:.1f} | {r.get('pss_vectors.npy', '-')} | "
              f"{r['pss']} | "
              f"{r['pss_anon']} |" for r in rows]
    totals = [f"{name}, {w} worker{'s' if w > 1 else ''}: "
              f"{sum(r['pss'] for r in rows if r['workers'] == w and r['setup'] == name) / 1024:.2f} GiB"
              for w in dict.fromkeys(r["workers"] for r in rows) for name, _, _ in setups]
    lines += ["", "Total PSS of all workers: " + "; ".join(totals) + "."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.md and .json")


if __name__ == "__main__":
    main()
