"""The searcher behind an accessor: loaded before a worker serves, swapped atomically when what ARTIFACTS names changes.

Each worker watches, every RELOAD_CHECK_S seconds in a background thread:
- what ARTIFACTS points at: the ETag of s3://bucket/prefix/CURRENT (one HEAD request), or the folder a local
  `index/current` resolves to; a change is loaded once, and a version that fails is refused and kept out until
  the pointer changes again (every instance does this by itself, so a new catalog reaches them all);
- a marker file in ARTIFACTS_CACHE, by which an admin reload sent to one worker reaches the others.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from pathlib import Path

from flask import Flask, current_app

from runtime import artifacts, storage
from runtime.layout import S3_POINTER
from service import metrics
from service.config import encoder_threads
from service.errors import APIError
from service.searcher import Searcher
from service.store import local_folder

log = logging.getLogger(__name__)

EXTENSION = "visual_search"


def pointer_of(location: str) -> str | None:
    """A token that changes when `location` names another version: CURRENT's ETag on S3, the resolved folder locally.

    None when there is nothing to follow (an S3 version folder without CURRENT, a local path with no index).
    """
    if location.startswith("s3://"):
        from botocore.exceptions import ClientError

        bucket, prefix = storage.split_s3(location.rstrip("/"))
        try:
            return storage.s3_client().head_object(Bucket=bucket, Key=f"{prefix}/{S3_POINTER}")["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
    try:
        return str(artifacts.resolve_index(Path(location)))
    except artifacts.ArtifactError:
        return None


class SearcherHolder:
    """Holds the current Searcher; a load builds the next one aside and swaps the reference in one step.

    A request takes the reference once and keeps using it, so requests in flight finish on the old
    index while new ones get the new one.
    """

    def __init__(self, config: dict) -> None:
        self.config = config
        self.searcher: Searcher | None = None
        self.error: str | None = None  # why nothing is served yet
        self.refused: dict | None = None  # the newest version offered, when it could not be loaded
        self.loaded_at = 0.0
        self.load_seconds = 0.0  # how long the last successful load took (fetch, verify, warm up)
        self.configured = config["ARTIFACTS"]  # as deployed; an admin reload changes `location`, not this
        self.location = self.configured
        self.marker = Path(config["ARTIFACTS_CACHE"]) / "reload.json"
        self._pointer: str | None = None
        self._marker_seen = 0.0
        self._load_lock = threading.Lock()  # one load at a time: two would hold two indexes in memory

    def _read_marker(self) -> dict | None:
        try:
            marker = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) and {"artifacts", "at", "by"} <= set(marker) else None

    def start(self) -> None:
        """Load what this worker starts with: ARTIFACTS, or what a reload asked for since (so a restarted worker
        joins its peers) unless the configured ARTIFACTS changed since that reload (a new deployment wins).

        A failure is kept for /health (503 with the reason) and the worker goes on watching for a new version.
        """
        marker = self._read_marker()
        if marker:
            self._marker_seen = marker["at"]
            if marker.get("configured") == self.configured:
                self.location = marker["artifacts"]
        self._pointer = self._safe_pointer(self.location)  # before loading: a change during the load is seen
        try:
            self.load(self.location)
        except Exception as exc:  # noqa: BLE001 - reported by /health; the watcher may bring a good version
            log.exception("could not load %s", self.location)
            self.error = f"{type(exc).__name__}: {exc}"
            metrics.refused()

    def load(self, location: str) -> Searcher:
        """Fetch (from S3 if needed), verify, load and warm up an index, then make it current."""
        with self._load_lock:
            started = time.perf_counter()
            searcher = Searcher(local_folder(location, Path(self.config["ARTIFACTS_CACHE"])),
                                threads=encoder_threads(self.config), reuse=self.searcher)
            searcher.warm_up()
            self.searcher, self.error, self.refused, self.loaded_at = searcher, None, None, time.time()
            self.location, self.load_seconds = location, time.perf_counter() - started
        metrics.serving(searcher.count)
        log.info("serving index %s (%d items, %s) from %s", searcher.version, searcher.count,
                 searcher.manifest["encoder"], location)
        return searcher

    def _attempt(self, location: str, why: str) -> None:
        """Load `location` once; on failure keep serving the current index and record the refusal."""
        log.info("loading %s (%s)", location, why)
        try:
            self.load(location)
        except Exception as exc:  # noqa: BLE001 - the old index keeps serving; /health and /metrics tell
            log.exception("refused %s; still serving %s", location,
                          self.searcher.version if self.searcher else "nothing")
            self.refused = {"artifacts": location, "pointer": self._pointer, "error": f"{type(exc).__name__}: {exc}",
                            "at": time.time()}
            metrics.refused()

    def _safe_pointer(self, location: str) -> str | None:
        try:
            return pointer_of(location)
        except Exception:  # noqa: BLE001 - S3 unreachable for a moment: look again at the next check
            log.warning("cannot read where %s points; will look again", location, exc_info=True)
            return self._pointer

    def check(self) -> None:
        """Look once for a reload announced by another worker, then for a new version where ARTIFACTS points."""
        marker = self._read_marker()
        if marker and marker["at"] > self._marker_seen:
            self._marker_seen = marker["at"]
            if marker["by"] != os.getpid() and marker["artifacts"] != self.location:
                self.location = marker["artifacts"]
                self._pointer = self._safe_pointer(self.location)
                self._attempt(self.location, f"announced by worker {marker['by']}")
                return
        pointer = self._safe_pointer(self.location)
        if pointer != self._pointer:
            self._pointer = pointer
            if pointer is not None:
                self._attempt(self.location, f"{self.location} now points at {pointer}")

    def announce(self, location: str) -> None:
        """Tell the other workers to load `location` (they notice within RELOAD_CHECK_S)."""
        now = time.time()
        self._marker_seen = now
        self._pointer = self._safe_pointer(location)
        payload = json.dumps({"artifacts": location, "at": now, "by": os.getpid(),
                              "configured": self.configured}).encode()
        storage.atomic_write_bytes(self.marker, payload)

    def get(self) -> Searcher:
        """Return the current searcher, or a 503 APIError while none is loaded."""
        searcher = self.searcher
        if searcher is None:
            detail = f": {self.error}" if self.error else "; retry in a few seconds"
            raise APIError(503, "not_ready", f"the index is not loaded yet{detail}")
        return searcher


def _watch(holder_ref: weakref.ref, interval: float) -> None:
    """Call check() every `interval` seconds for as long as the holder (its app) exists."""
    while True:
        time.sleep(interval)
        holder = holder_ref()
        if holder is None:
            return
        try:
            holder.check()
        except Exception:  # noqa: BLE001 - the watcher must outlive any one failed look
            log.exception("reload check failed")
        del holder


def init_app(app: Flask) -> None:
    """Create the holder on app.extensions, load the configured artifacts, and start watching them.

    With LOAD_IN_BACKGROUND false (the default) the index is loaded and warmed up before create_app returns, so a
    gunicorn worker accepts no connection until it can answer; true loads in a thread (/health says 503 meanwhile).
    """
    holder = SearcherHolder(app.config)
    app.extensions[EXTENSION] = holder
    if app.config["LOAD_IN_BACKGROUND"]:
        threading.Thread(target=holder.start, name="index-loader", daemon=True).start()
    else:
        holder.start()
    interval = float(app.config["RELOAD_CHECK_S"])
    if interval > 0:
        threading.Thread(target=_watch, args=(weakref.ref(holder), interval), name="index-watcher",
                         daemon=True).start()


def get_holder() -> SearcherHolder:
    """Return the app's SearcherHolder."""
    return current_app.extensions[EXTENSION]


def get_searcher() -> Searcher:
    """Return the searcher serving this request (503 while loading)."""
    return get_holder().get()
