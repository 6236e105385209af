"""Service configuration: defaults, then environment variables (Beanstalk environment properties), then a mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "ARTIFACTS": "data/demo/index/current",  # a local index folder or s3://bucket/prefix
    "ARTIFACTS_CACHE": "/tmp/visual-search-artifacts",  # where S3 artifacts are downloaded and checked
    "IMAGE_BASE_URL": "",  # an S3 bucket or CDN URL serving the index's thumbs/; empty: served by /images/
    "MAX_UPLOAD_MB": 10,
    "MAX_PIXELS": 40_000_000,  # a photo's own width x height (its header); above is refused as a bomb (413)
    # pixels actually decoded per photo: a JPEG counts at the DCT scale it is decoded at (a 48 MP phone JPEG decodes
    # 0.75 MP), other formats in full; 16 MP is a 12 MP PNG with room, and caps a request at 48 MB of RGB
    "MAX_DECODED_PIXELS": 16_000_000,
    "MAX_FILTER_VALUES": 50,  # filter values in one request, all columns together (400 above)
    # how far collapse=true may widen the ranking to find k distinct near-duplicate groups (products ranked)
    "MAX_COLLAPSE_FETCH": 1_000,
    # image_url downloads one worker runs at once; more get a 503 with Retry-After at once, so slow URLs never hold
    # every thread of a worker and uploads keep being answered
    "MAX_URL_FETCHES": 2,
    "URL_TIMEOUT_S": 5.0,
    "ALLOW_PRIVATE_URLS": False,  # image_url may not reach loopback/private/link-local hosts (cloud metadata)
    "ADMIN_TOKEN": "",  # bearer token of POST /api/admin/reload; empty: reload is disabled (403)
    "MIN_CROP_PX": 32,  # a bbox crop narrower or shorter than this is refused (422): too little for the encoder
    # threads of a TFLite backbone per worker; 0: the cores shared out among WEB_CONCURRENCY workers (at least 1)
    "ENCODER_THREADS": 0,
    "DEFAULT_K": 10,
    "MAX_K": 100,
    # false: a worker loads and warms its index before it accepts a connection (gunicorn hands a socket only to a
    # booted worker), so no shopper meets a loading worker; true: load in a thread, /health says 503 meanwhile
    "LOAD_IN_BACKGROUND": False,
    # how often each worker reads ARTIFACTS' pointer (one S3 HEAD of CURRENT, or a readlink of index/current)
    # and loads the version it names when it moved; 0 turns watching off
    "RELOAD_CHECK_S": 5.0,
    # Analytics (docs/events.md): a folder turns query and click events on; each worker writes its own files there
    "EVENTS_DIR": "",
    "EVENTS_TARGET": "",  # s3://bucket/prefix or a folder that closed files are shipped to; empty: kept in EVENTS_DIR
    "EVENTS_QUEUE": 10_000,  # records waiting for the writer at most; more are dropped (counted), never waited for
    "EVENTS_ROTATE_S": 300.0,  # a file is closed, and can be shipped, this long after its first record
    "EVENTS_ROTATE_MB": 64.0,
    "EVENTS_SHIP_S": 30.0,
    "EVENTS_RETENTION_DAYS": 90,  # closed files kept in EVENTS_DIR when there is no target (S3: a lifecycle rule)
    "EVENTS_KEEP_VECTORS": False,  # store each photo query's vector (float16) so the report can group missed demand
    # A/B test: a second index (a pointer or version, like ARTIFACTS) served to AB_SHARE of clients, assigned by a
    # stable hash of AB_NAME and the client id; empty: every client gets ARTIFACTS
    "AB_ARTIFACTS": "",
    "AB_SHARE": 0.5,
    "AB_NAME": "ab",
}
TYPES = {key: type(value) for key, value in DEFAULTS.items()}


def _parse(key: str, raw: str) -> Any:
    kind = TYPES[key]
    if kind is bool:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"environment variable {key}={raw!r} is not a boolean (use true or false)")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {key}={raw!r} is not a valid {kind.__name__}") from None


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Return the configuration: DEFAULTS, replaced by environment variables, replaced by `overrides`."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        if key in environ:
            config[key] = _parse(key, environ[key])
    config.update(overrides or {})
    if not 1 <= int(config["MAX_K"]) <= 1000:
        raise ValueError(f"MAX_K must be between 1 and 1000, got {config['MAX_K']}")
    for key in ("MAX_PIXELS", "MAX_DECODED_PIXELS", "MAX_FILTER_VALUES", "MAX_COLLAPSE_FETCH", "MAX_URL_FETCHES"):
        if int(config[key]) < 1:
            raise ValueError(f"{key} must be at least 1, got {config[key]}")
    if not 0.0 <= float(config["AB_SHARE"]) <= 1.0:
        raise ValueError(f"AB_SHARE must be a share from 0 to 1, got {config['AB_SHARE']}")
    if int(config["EVENTS_QUEUE"]) < 1:
        raise ValueError(f"EVENTS_QUEUE must be at least 1, got {config['EVENTS_QUEUE']}")
    return config


def encoder_threads(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> int:
    """Threads of each worker's TFLite backbone: ENCODER_THREADS, else the cores shared among WEB_CONCURRENCY workers.

    One query is one small image, so a second thread gains little (1.02 against 1.05 ms for MediaPipe) while two
    workers each running two threads on two cores wait on each other.
    """
    if int(config["ENCODER_THREADS"]) > 0:
        return int(config["ENCODER_THREADS"])
    environ = os.environ if environ is None else environ
    workers = environ.get("WEB_CONCURRENCY", "1")
    return max(1, (os.cpu_count() or 1) // max(1, int(workers) if workers.isdigit() else 1))
