"""Prometheus metrics with prometheus_client; under gunicorn one scrape is the sum over every worker.

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module, so each worker writes
its values to files there and /metrics aggregates them (counters and histograms summed, gauges per their mode).
Without that variable (tests, `flask run`) the values live in this process.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("visual_search_requests", "HTTP requests by endpoint, method and status.",
                   ["endpoint", "method", "status"], registry=REGISTRY)
ERRORS = Counter("visual_search_errors", "Responses with a 4xx or 5xx status.", ["class"], registry=REGISTRY)
LATENCY = Histogram("visual_search_request_duration_seconds", "Request latency.", ["endpoint"], buckets=BUCKETS,
                    registry=REGISTRY)
STAGES = Histogram("visual_search_search_stage_seconds", "Time per search stage.", ["stage"], buckets=BUCKETS,
                   registry=REGISTRY)
RELOADS = Counter("visual_search_index_loads", "Index loads by outcome (loaded, or refused and still serving the "
                  "previous one).", ["outcome"], registry=REGISTRY)
READY = Gauge("visual_search_ready", "1 when every live worker serves an index.", multiprocess_mode="livemin",
              registry=REGISTRY)
ITEMS = Gauge("visual_search_index_items", "Items in the index served (largest over live workers).",
              multiprocess_mode="livemax", registry=REGISTRY)
REFUSED = Gauge("visual_search_reload_refused", "1 while the newest version a worker was offered failed "
                "verification or loading (see /health); 0 once a version loads.", multiprocess_mode="livemax",
                registry=REGISTRY)
LIMITED = Counter("visual_search_limited", "Requests refused by a limit (service/limits.py), by limit.", ["limit"],
                  registry=REGISTRY)
EVENTS_WRITTEN = Counter("visual_search_events_written", "Analytics records written to the event files.",
                         registry=REGISTRY)
EVENTS_DROPPED = Counter("visual_search_events_dropped", "Analytics records lost, by stream and reason (queue_full: "
                         "the writer fell behind and the search did not wait; write_failed: the disk refused them).",
                         ["stream", "reason"], registry=REGISTRY)
EVENTS_SHIPPED = Counter("visual_search_events_files_shipped", "Closed event files moved to EVENTS_TARGET, by "
                         "outcome (a failed file stays and is shipped again).", ["outcome"], registry=REGISTRY)


def record(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one finished request."""
    REQUESTS.labels(endpoint, method, str(status)).inc()
    if status >= 400:
        ERRORS.labels(f"{str(status)[0]}xx").inc()
    LATENCY.labels(endpoint).observe(seconds)


def stage(name: str, seconds: float) -> None:
    """Record the time of one stage of a search (decode, embed, search)."""
    STAGES.labels(name).observe(seconds)


def serving(items: int) -> None:
    """Record that this worker now serves an index of `items` items."""
    READY.set(1)
    ITEMS.set(items)
    REFUSED.set(0)
    RELOADS.labels("loaded").inc()


def refused() -> None:
    """Record that this worker refused a version it was offered."""
    REFUSED.set(1)
    RELOADS.labels("refused").inc()


def limited(kind: str) -> None:
    """Count one request refused by a limit (decoded_pixels, filter_values, url_fetches)."""
    LIMITED.labels(kind).inc()


def events_on() -> None:
    """Show the drop counters at 0 from the start, so an alert on their rate has a series to watch."""
    for stream in ("ubi_queries", "ubi_events"):
        for reason in ("queue_full", "write_failed"):
            EVENTS_DROPPED.labels(stream, reason)


def event_dropped(stream: str, reason: str) -> None:
    """Count one analytics record lost (queue_full, write_failed)."""
    EVENTS_DROPPED.labels(stream, reason).inc()


def events_written(count: int) -> None:
    """Count analytics records written."""
    EVENTS_WRITTEN.inc(count)


def events_shipped(outcome: str) -> None:
    """Count one closed event file shipped (ok) or not (failed)."""
    EVENTS_SHIPPED.labels(outcome).inc()


def render() -> tuple[bytes, str]:
    """Return the exposition (every worker's values when in multiprocess mode) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
