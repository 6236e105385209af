"""The searcher behind an accessor: loaded after start-up, swapped atomically on reload, shared by all routes."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from flask import Flask, current_app

from runtime.storage import atomic_write_bytes
from service.errors import APIError
from service.searcher import Searcher
from service.store import local_folder

log = logging.getLogger(__name__)

EXTENSION = "visual_search"


class SearcherHolder:
    """Holds the current Searcher; a reload builds the next one aside and swaps the reference in one step.

    A request takes the reference once and keeps using it, so requests in flight finish on the old
    index while new ones get the new one. Several gunicorn workers learn of a reload through a marker
    file in the artifacts cache, checked at most every RELOAD_CHECK_S seconds.
    """

    def __init__(self, config: dict) -> None:
        self.config = config
        self.searcher: Searcher | None = None
        self.error: str | None = None
        self.loaded_at = 0.0
        self._lock = threading.Lock()
        self._loading = False
        self._last_check = 0.0
        self.marker = Path(config["ARTIFACTS_CACHE"]) / "reload.json"
        self.configured = config["ARTIFACTS"]

    def starting_location(self) -> str:
        """ARTIFACTS, or what a reload asked for since (so a restarted worker joins its peers), unless the
        configured ARTIFACTS changed since that reload (a new deployment wins)."""
        try:
            wanted = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return self.configured
        return wanted["artifacts"] if wanted.get("configured") == self.configured else self.configured

    def load(self, location: str) -> Searcher:
        """Fetch (from S3 if needed), verify, load and warm up an index, then make it current."""
        searcher = Searcher(local_folder(location, Path(self.config["ARTIFACTS_CACHE"])))
        searcher.warm_up()
        self.searcher, self.error, self.loaded_at = searcher, None, time.time()
        log.info("serving index %s (%d items, %s) from %s", searcher.version, len(searcher.items),
                 searcher.manifest["encoder"], location)
        return searcher

    def load_in_background(self, location: str) -> None:
        """Start loading `location` in a thread (one at a time); failures are kept for /health."""
        with self._lock:
            if self._loading:
                return
            self._loading = True

        def work() -> None:
            try:
                self.load(location)
            except Exception as exc:  # noqa: BLE001 - reported by /health, the old index keeps serving
                log.exception("could not load %s", location)
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self._loading = False

        threading.Thread(target=work, name="index-loader", daemon=True).start()

    def announce(self, location: str) -> None:
        """Tell the other workers to load `location` (they notice within RELOAD_CHECK_S)."""
        payload = json.dumps({"artifacts": location, "at": time.time(), "by": os.getpid(),
                              "configured": self.configured}).encode()
        atomic_write_bytes(self.marker, payload)

    def check_for_reload(self) -> None:
        """Start a background reload when another worker announced a newer one."""
        now = time.monotonic()
        if now - self._last_check < float(self.config["RELOAD_CHECK_S"]):
            return
        self._last_check = now
        try:
            wanted = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return
        if wanted["at"] > self.loaded_at and wanted["by"] != os.getpid():
            self.config["ARTIFACTS"] = wanted["artifacts"]
            self.load_in_background(wanted["artifacts"])

    def get(self) -> Searcher:
        """Return the current searcher, or a 503 APIError while none is loaded."""
        searcher = self.searcher
        if searcher is None:
            detail = f": {self.error}" if self.error else "; retry in a few seconds"
            raise APIError(503, "not_ready", f"the index is not loaded yet{detail}")
        return searcher


def init_app(app: Flask) -> None:
    """Create the holder on app.extensions and start loading the configured artifacts."""
    holder = SearcherHolder(app.config)
    app.extensions[EXTENSION] = holder
    location = holder.starting_location()
    if app.config["LOAD_IN_BACKGROUND"]:
        holder.load_in_background(location)
    else:
        holder.load(location)


def get_holder() -> SearcherHolder:
    """Return the app's SearcherHolder."""
    return current_app.extensions[EXTENSION]


def get_searcher() -> Searcher:
    """Return the searcher serving this request (503 while loading)."""
    return get_holder().get()
