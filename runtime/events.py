"""Search analytics events: the UBI record shapes, the folder layout they are stored in, and reading them back.

The service writes (`service.events`), the analytics report reads (`pipeline.analytics`); this module is the one
copy of what both must agree on. Records follow OpenSearch's User Behavior Insights (UBI) schemas, so each file
loads into the `ubi_queries` or `ubi_events` index (or a warehouse table) unchanged:

    <root>/<stream>/dt=YYYY-MM-DD/<host>-<pid>-<started>-<seq>.jsonl

`stream` is `ubi_queries` (one record per search the service answered) or `ubi_events` (what the shopper did with
the results: a click, a "more like this"). `dt=` partitions by UTC day, as Athena, Spark and BigQuery expect. A
file being written sits in `<root>/open/` and moves into its partition once closed; only closed files are shipped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from runtime import storage

log = logging.getLogger(__name__)

APPLICATION = "visual-search"  # UBI's `application`: which search front produced the record
QUERIES = "ubi_queries"
EVENTS = "ubi_events"
STREAMS = (QUERIES, EVENTS)
OBJECT_ID_FIELD = "product_id"  # UBI's `object_id_field`: the hits are the catalog's own product ids
# what a shopper may do with a result (`action_name` of an event); each of them is engagement with the result at
# its position, counted by the report as a click
ACTIONS = ("click", "more_like_this", "add_to_cart", "purchase")
QUERY_KINDS = ("upload", "url", "crop", "similar")  # `query_attributes.kind`
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a random id the client keeps (a UUID), never a person's name
OPEN_DIR = "open"
SUFFIX = ".jsonl"
PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")


def iso_time(seconds: float) -> str:
    """UBI's `timestamp`: ISO 8601 in UTC with milliseconds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day_of(seconds: float) -> str:
    """The UTC day (YYYY-MM-DD) a record of this time is filed under."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d")


def partition(stream: str, day: str) -> str:
    """The folder, relative to the root, of one stream's closed files of one UTC day."""
    if stream not in STREAMS:
        raise ValueError(f"unknown event stream {stream!r}; use one of {', '.join(STREAMS)}")
    return f"{stream}/dt={day}"


def list_files(location: str, stream: str, days: set[str] | None = None) -> list[str]:
    """The closed files of `stream` under a local folder or an s3://bucket/prefix, oldest day first.

    Args:
        location: the root events are shipped to (or written in).
        stream: QUERIES or EVENTS.
        days: only these UTC days (YYYY-MM-DD); None for every day.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown event stream {stream!r}; use one of {', '.join(STREAMS)}")
    found: list[tuple[str, str]] = []
    if location.startswith("s3://"):
        bucket, prefix = storage.split_s3(location.rstrip("/"))
        base = f"{prefix}/{stream}/" if prefix else f"{stream}/"
        pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        for page in pages:
            for entry in page.get("Contents", []):
                key = entry["Key"]
                match = PARTITION.search(key)
                if match and key.endswith(SUFFIX) and (days is None or match.group(1) in days):
                    found.append((match.group(1), f"s3://{bucket}/{key}"))
    else:
        root = Path(location) / stream
        if root.is_dir():
            for folder in root.iterdir():
                match = PARTITION.fullmatch(folder.name)
                if match and (days is None or match.group(1) in days):
                    found.extend((match.group(1), str(path)) for path in folder.glob(f"*{SUFFIX}"))
    return [name for _, name in sorted(found)]


def read_lines(name: str) -> Iterator[bytes]:
    """The lines of one events file, local or on S3, streamed: a file may hold a day of one worker's searches, and
    a million lines held at once would cost the report twice the file's size."""
    if name.startswith("s3://"):
        bucket, key = storage.split_s3(name)
        yield from storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].iter_lines()
        return
    with open(name, "rb") as lines:
        yield from lines


def read_records(location: str, stream: str, days: set[str] | None = None) -> Iterator[dict]:
    """Every record of `stream` under `location`; a line that is not a JSON object (a file cut by a crash) is
    skipped and logged, never fatal."""
    for name in list_files(location, stream, days):
        bad = 0
        for line in read_lines(name):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                bad += 1
        if bad:
            log.warning("%s: skipped %d lines that are not JSON records (a write cut short?)", name, bad)
