"""What publishing a new full version costs when the catalog's images did not change: bytes and requests sent to S3,
seconds to publish, and an instance's load of it (bytes downloaded, bytes hashed, seconds) with the previous
version in its cache. S3 is moto's server on 127.0.0.1.

    python -m benchmarks.publish_cost --data-dir /tmp/fs-lite2

It adds an index version to DATA_DIR (the same catalog and embeddings, other Annoy trees), as a nightly rebuild
whose images did not change would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from runtime import storage, versions

COUNTING = threading.Lock()  # the fetch and the upload run on several threads


def _count_requests(client, sent: Counter) -> None:
    """Count every S3 call of `client` by operation, and the bytes GetObject returned."""
    def before(model, **_):
        with COUNTING:
            sent[model.name] += 1

    def after(http_response, parsed, model, **_):
        if model.name == "GetObject":
            with COUNTING:
                sent["bytes_downloaded"] += int(parsed.get("ContentLength") or 0)

    client.meta.events.register("before-call.s3", lambda model, **kw: before(model))
    client.meta.events.register("after-call.s3", after)


def measure(data_dir: Path, trees: int | None = None) -> dict:
    """Publish the served version, build a new full version of the same catalog, publish it, and load both into one
    instance cache; return the figures."""
    import boto3
    from moto.server import ThreadedMotoServer

    from pipeline import index
    from scripts import deploy
    from service import store
    from service.searcher import Searcher
    from service.store import fetch_s3

    fetch_s3_hashed = getattr(store, "fetch_s3_hashed", None)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION":
                       "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    hashed = Counter()
    real_sha = storage.sha256_file

    def counting_sha(path, *args, **kwargs):
        with COUNTING:
            hashed["bytes"] += Path(path).stat().st_size
        return real_sha(path, *args, **kwargs)

    storage.sha256_file = counting_sha
    figures: dict = {}
    try:
        bucket = f"bench-{int(time.time())}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        client = storage.s3_client()
        sent: Counter = Counter()
        _count_requests(client, sent)
        current = (data_dir / "index" / "current").resolve()
        manifest = storage.read_json(current / "manifest.json")
        files = manifest["files"]
        figures["version_files"] = len(files)
        figures["version_bytes"] = sum(e["bytes"] for e in files.values())
        for step in ("first", "second"):
            if step == "second":
                started = time.perf_counter()
                built = index.run(data_dir, trees=trees or int(manifest["n_trees"]) + 1)
                figures["index_seconds"] = round(time.perf_counter() - started, 2)
                assert built["version"] != manifest["version"], "index made no new version"
            sent.clear()
            started = time.perf_counter()
            result = deploy.upload_artifacts(data_dir / "index" / "current", bucket, "prod", client)
            figures[f"{step}_publish"] = {"seconds": round(time.perf_counter() - started, 2),
                                          "bytes_uploaded": result["bytes"], "files_uploaded": result["uploaded"],
                                          "requests": sum(v for k, v in sent.items() if k != "bytes_downloaded")}
        cache = Path(tempfile.mkdtemp(prefix="publish-cost-"))
        for step in ("first", "second"):
            if step == "first":  # the instance served the first version: publish it again as CURRENT to fetch it
                versions.write_s3_pointer(client, bucket, "prod", manifest["version"])
            else:
                versions.write_s3_pointer(client, bucket, "prod", built["version"])
            sent.clear()
            hashed.clear()
            started = time.perf_counter()
            if fetch_s3_hashed is None:  # the code before files were stored by content
                folder, hashed_now = fetch_s3(f"s3://{bucket}/prod", cache), {}
            else:
                folder, hashed_now = fetch_s3_hashed(f"s3://{bucket}/prod", cache)
            fetched = time.perf_counter()
            Searcher(folder, **({"hashed": hashed_now} if hashed_now else {}))
            figures[f"{step}_load"] = {"fetch_seconds": round(fetched - started, 2),
                                       "searcher_seconds": round(time.perf_counter() - fetched, 2),
                                       "bytes_downloaded": sent["bytes_downloaded"],
                                       "bytes_hashed": hashed["bytes"],
                                       "requests": sum(v for k, v in sent.items() if k != "bytes_downloaded")}
    finally:
        storage.sha256_file = real_sha
        server.stop()
    return figures


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir with an index (it gains a version)")
    parser.add_argument("--trees", type=int, help="trees of the new version (default: the served one's + 1)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.data_dir, args.trees), indent=2))


if __name__ == "__main__":
    main()
