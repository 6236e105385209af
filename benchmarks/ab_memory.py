"""What serving an A/B test costs a worker: one version, a delta over it as the second arm, a second full version.

Starts one gunicorn worker per setting over the same index folder and reads the worker's private memory and PSS
(`smaps`) once it serves, after a few searches. A delta arm shares its base's memory maps and extractor
(`Searcher.reuse`), so it should cost about its own removals; a second full version costs its own index, vectors
and model.

    python -m benchmarks.ab_memory --index-dir DATA/index --base VERSION --delta VERSION --full VERSION
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import free_port, multipart, raw_request, smaps, start_gunicorn, stop
from runtime.items import read_items
from runtime.layout import ITEMS_FILE


def main(argv: list[str] | None = None) -> None:
    """Measure a worker's memory for each setting and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", type=Path, required=True, help="the folder holding the versions")
    parser.add_argument("--base", required=True)
    parser.add_argument("--delta", required=True, help="a delta version over --base")
    parser.add_argument("--full", required=True, help="another full version")
    args = parser.parse_args(argv)
    base = args.index_dir / args.base
    item = read_items(base / ITEMS_FILE)[0]
    body, content_type = multipart("image", "q.jpg", (base / item["thumbnail"]).read_bytes())
    work = Path(tempfile.mkdtemp(prefix="ab-memory-"))
    settings = {"one version": {}, "+ delta arm": {"AB_ARTIFACTS": str(args.index_dir / args.delta)},
                "+ full arm": {"AB_ARTIFACTS": str(args.index_dir / args.full)}}
    print(f"{'setting':<14} {'private MiB':>12} {'PSS MiB':>9}")
    for name, env in settings.items():
        port = free_port()
        process, pids = start_gunicorn(base, port, 1, work / "cache", env={"RELOAD_CHECK_S": "0", **env})
        try:
            for _ in range(40):  # both arms answer: clients split between them
                reply = raw_request(port, "/api/search?k=10", body, content_type)
                assert reply.status == 200, reply.body[:200]
            memory = smaps(next(iter(pids)))
            print(f"{name:<14} {memory['private']:>12.1f} {memory['pss']:>9.1f}")
        finally:
            stop(process)


if __name__ == "__main__":
    main()
