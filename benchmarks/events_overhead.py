"""What recording analytics costs a search: the same index served twice, events off and on, request for request.

Two gunicorn servers (2 workers each, as on an instance) over one index: one without EVENTS_DIR, one with it (and,
with --vectors, keeping each query's vector). Each round sends the same catalog photo to both, on new connections,
in an order that alternates, so both share the machine's noise. Prints p50/p99 as the client saw them and the
app's own time (Server-Timing `app`), the difference of the p50s (target: at most 0.2 ms), and what the events
server wrote and dropped (/metrics). Then, with --sigkill, it kills the events server's workers right after an
answer and counts the query records the workers that replace them recovered against the query ids answered.

    python -m benchmarks.events_overhead --index DATA/index/current [--rounds 500] [--vectors] [--sigkill]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import free_port, multipart, raw_request, server_timing, start_gunicorn, stop
from runtime import artifacts, events
from runtime.items import read_items
from runtime.layout import ITEMS_FILE


def _metric(base_port: int, name: str) -> float:
    body = raw_request(base_port, "/metrics").body.decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.MULTILINE))


def main(argv: list[str] | None = None) -> None:
    """Serve one index with events off and on, send the same searches to both, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--vectors", action="store_true", help="keep the query vectors (EVENTS_KEEP_VECTORS)")
    parser.add_argument("--sigkill", action="store_true", help="then kill -9 the events server's workers")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    item = read_items(folder / ITEMS_FILE)[0]
    body, content_type = multipart("image", "q.jpg", (folder / item["thumbnail"]).read_bytes())
    work = Path(tempfile.mkdtemp(prefix="events-overhead-"))
    env_on = {"EVENTS_DIR": str(work / "events"), "EVENTS_KEEP_VECTORS": str(args.vectors).lower(),
              "RELOAD_CHECK_S": "0"}
    ports = {"off": free_port(), "on": free_port()}
    servers = {}
    try:
        for name, env in (("off", {"RELOAD_CHECK_S": "0"}), ("on", env_on)):
            servers[name] = start_gunicorn(folder, ports[name], 2, work / f"cache-{name}", env=env)
        seen: dict[str, dict[str, list[float]]] = {n: {"client": [], "app": []} for n in ports}
        answered = []
        for n in range(args.rounds + 20):
            order = ("off", "on") if n % 2 else ("on", "off")
            for name in order:
                reply = raw_request(ports[name], "/api/search?k=10", body, content_type)
                assert reply.status == 200, reply.body[:200]
                if n >= 20:  # the first rounds warm the connections' code paths
                    seen[name]["client"].append(reply.seconds * 1000)
                    seen[name]["app"].append(server_timing(reply.headers.get("Server-Timing", ""))["app"])
                if name == "on":
                    answered.append(json.loads(reply.body)["query_id"])
        print(f"{args.rounds} rounds, one 10-result search per server each, on {folder.name}"
              f"{' (vectors kept)' if args.vectors else ''}")
        for kind in ("client", "app"):
            p50 = {n: float(np.percentile(seen[n][kind], 50)) for n in ports}
            p99 = {n: float(np.percentile(seen[n][kind], 99)) for n in ports}
            print(f"{kind:>6}: events off p50 {p50['off']:.3f} ms p99 {p99['off']:.3f} | on p50 {p50['on']:.3f} ms "
                  f"p99 {p99['on']:.3f} | p50 difference {p50['on'] - p50['off']:+.3f} ms")
        print(f"written {_metric(ports['on'], 'visual_search_events_written_total'):.0f}, dropped "
              f"{_metric(ports['on'], 'visual_search_events_dropped_total'):.0f}")
        if args.sigkill:
            _, pids = servers["on"]
            for pid in pids:
                os.kill(pid, 9)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any((work / "events" / events.OPEN_DIR).glob(f"*.{pid}.*")
                                                      for pid in pids):
                time.sleep(0.2)
            recorded = {r["query_id"] for r in events.read_records(str(work / "events"), events.QUERIES)}
            print(f"kill -9 of both workers right after the last answer: {len(set(answered) - recorded)} of "
                  f"{len(answered)} query records lost")
    finally:
        for process, _ in servers.values():
            stop(process)


if __name__ == "__main__":
    main()
