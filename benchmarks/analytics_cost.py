"""What the analytics report costs as events grow: synthetic days of UBI events, then the report over them.

Writes `--days` days of `--per-day` query events (each with 10 results, a best score, 10% with a filter, a
client of `--clients`, a share with a click, and a few clicks that land after midnight), then times
`pipeline.analytics.run` and reports its seconds, its peak memory and the events read per second.

    python -m benchmarks.analytics_cost --per-day 1000000 --days 1 --work /tmp/analytics-cost
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import peak_rss_mib, reset_peak
from runtime import events

HITS = 10
PRODUCTS = 50_000


def write_day(root: Path, day: str, searches: int, clients: int, rng: np.random.Generator, click_share: float = 0.4,
              late_share: float = 0.02, vectors: bool = False, dim: int = 16) -> dict:
    """Write one day of synthetic query and click events under `root` (the layout the service ships).

    Returns:
        What was written: searches, clicks (by the day they were filed), and per query its first clicked rank.
    """
    base = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()
    following = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    seconds = np.sort(rng.uniform(0, 86_400, searches))
    client = rng.integers(0, clients, searches)
    best = np.clip(rng.normal(0.8, 0.08, searches), -1, 1)
    clicked = rng.random(searches) < click_share
    rank = np.minimum(rng.geometric(0.45, searches), HITS)
    late = rng.random(searches) < late_share
    kinds = np.array(events.QUERY_KINDS)[rng.integers(0, len(events.QUERY_KINDS), searches)]
    filtered = rng.random(searches) < 0.1
    firsts = {}
    paths = {stream: root / events.partition(stream, day) / "synthetic-1.jsonl" for stream in events.STREAMS}
    late_path = root / events.partition(events.EVENTS, following) / "synthetic-late.jsonl"
    for path in (*paths.values(), late_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    clicks = 0
    with open(paths[events.QUERIES], "a") as queries, open(paths[events.EVENTS], "a") as actions, \
            open(late_path, "a") as late_actions:
        for i in range(searches):
            query_id = f"{day}-{i}"
            hits = [str(h) for h in rng.integers(0, PRODUCTS, HITS)]
            attributes = {"kind": str(kinds[i]), "k": HITS,
                          "filters": {"gender": ["Women"]} if filtered[i] else {},
                          "scores": [round(float(best[i]) - 0.01 * r, 5) for r in range(HITS)],
                          "index_version": "v1", "arm": "B" if client[i] % 2 else "A"}
            if vectors:
                vector = rng.normal(size=dim).astype(np.float16)
                attributes["vector_f16"] = base64.b64encode(vector.tobytes()).decode()
            stamp = events.iso_time(base + seconds[i])
            queries.write(json.dumps({"application": events.APPLICATION, "query_id": query_id,
                                      "client_id": f"client-{client[i]}", "timestamp": stamp, "user_query": "",
                                      "object_id_field": "product_id", "query_response_id": query_id,
                                      "query_response_hit_ids": hits, "query_attributes": attributes},
                                     separators=(",", ":")) + "\n")
            if clicked[i]:
                firsts[query_id] = int(rank[i])
                clicks += 1
                (late_actions if late[i] else actions).write(json.dumps(
                    {"application": events.APPLICATION, "action_name": "click", "query_id": query_id,
                     "client_id": f"client-{client[i]}", "timestamp": stamp, "message_type": "INFO",
                     "event_attributes": {"object": {"object_id": hits[rank[i] - 1]},
                                          "position": {"ordinal": int(rank[i])}}},
                    separators=(",", ":")) + "\n")
    return {"searches": searches, "clicks": clicks, "first_click": firsts}


def main(argv: list[str] | None = None) -> None:
    """Write synthetic days, time the report over them, and print the figures."""
    from pipeline import analytics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-day", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/analytics-cost"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    first = dt.date(2026, 1, 1)
    for n in range(args.days):
        write_day(args.work / "events", (first + dt.timedelta(days=n)).isoformat(), args.per_day, args.clients, rng)
    written = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (args.work / "events").rglob("*.jsonl"))
    reset_peak()
    started = time.perf_counter()
    summary = analytics.run(str(args.work / "events"), args.work / "report", days=args.days)
    seconds = time.perf_counter() - started
    total = args.per_day * args.days
    print(f"{total:,} searches over {args.days} days ({size / 2**20:,.0f} MiB of JSONL, written in {written:.0f} s)")
    print(f"report: {seconds:.1f} s ({total / seconds:,.0f} searches/s with their clicks), peak RSS "
          f"{peak_rss_mib():,.0f} MiB, {summary['clicks']:,} clicks")


if __name__ == "__main__":
    main()
