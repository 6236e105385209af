"""The searcher behind an accessor: loaded before a worker serves, swapped atomically when ARTIFACTS' pointer moves.

Where a worker's index comes from has one source of truth: the pointer that ARTIFACTS names, the object
s3://bucket/prefix/CURRENT or a local `index/current` symlink. Every RELOAD_CHECK_S each worker reads it (one
HEAD request, or one readlink) in a background thread and loads the version it names when it moved; an admin
reload moves the pointer (or only asks for a check) and so reaches every worker of every instance. Reading the
pointer and loading happen under one lock, so the watcher and a reload request never race. Any error of S3 or the
network (a throttle, a 5xx, a cut connection, a manifest not found) is retried with backoff, at most
TRANSIENT_BACKOFF_MAX_S apart; only a version that fails verification (`ArtifactError`: a hash, a size, a manifest
that is not one, a name that is no path) is refused, and kept out until the pointer moves again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from pathlib import Path

from flask import Flask, current_app

from runtime import artifacts, storage, versions
from runtime.layout import MANIFEST
from service import metrics
from service.config import encoder_threads
from service.errors import APIError
from service.searcher import Searcher
from service.store import local_folder, mark_serving, unmark_serving

log = logging.getLogger(__name__)

EXTENSION = "visual_search"
TREATMENT_EXTENSION = "visual_search_treatment"  # the A/B test's second index (AB_ARTIFACTS)
RETRIES = 3  # reads of the pointer before a check gives up until the next one
BACKOFF_S = 0.2  # first wait between them, doubled each time
# The longest wait before a version that failed to load (not to verify) is tried again: short when S3 or the
# network failed (`storage.is_transient`), so a version is served soon after S3 answers again; long for anything
# else (a model that cannot load), which retrying every few seconds would only repeat
TRANSIENT_BACKOFF_MAX_S = 10.0
MAX_BACKOFF_S = 300.0


def pointer_of(location: str) -> str | None:
    """A token that changes when `location` names another version: CURRENT's ETag on S3, the resolved folder locally.

    None when there is nothing to follow (an S3 version folder without CURRENT, a local path with no index).
    """
    if location.startswith("s3://"):
        bucket, prefix = storage.split_s3(location.rstrip("/"))
        return versions.s3_pointer_etag(storage.s3_client(), bucket, prefix)
    try:
        return str(artifacts.resolve_index(Path(location)))
    except artifacts.ArtifactError:
        return None


def move_pointer(location: str, version: str) -> None:
    """Point ARTIFACTS' pointer at another of its versions (a sibling folder, or a version under the S3 prefix).

    Raises:
        ArtifactError: not a version name, no such version there, or ARTIFACTS names a version folder rather than
            a pointer.
        PermissionError: S3 denies this instance the write of the pointer.
        botocore's errors: S3 did not answer (`storage.is_transient`); nothing moved.
    """
    versions.check_name(version)
    if location.startswith("s3://"):
        from botocore.exceptions import ClientError

        bucket, prefix = storage.split_s3(location.rstrip("/"))
        client = storage.s3_client()
        try:
            client.head_object(Bucket=bucket, Key=versions.version_key(prefix, version, MANIFEST))
        except ClientError as exc:
            if storage.is_not_found(exc):
                raise artifacts.ArtifactError(f"no version {version} in s3://{bucket}/{prefix}") from None
            raise
        try:
            versions.write_s3_pointer(client, bucket, prefix, version)
        except ClientError as exc:
            if storage.is_denied(exc):
                raise PermissionError(
                    f"this instance may not write s3://{bucket}/{versions.pointer_key(prefix)} "
                    f"({exc.response['Error'].get('Code')}): give its role s3:PutObject on that one object (the "
                    "role deploy creates has it), or move the pointer with `scripts/deploy.py --artifacts-only`"
                ) from None
            raise
        return
    pointer = versions.local_pointer(location)
    if pointer is None:
        raise artifacts.ArtifactError(f"ARTIFACTS {location} names a version folder, not an index/current pointer")
    if not (pointer.parent / version / MANIFEST).is_file():
        raise artifacts.ArtifactError(f"no version {version} in {pointer.parent}")
    versions.point_local(pointer.parent, version)


class SearcherHolder:
    """Holds the current Searcher; a load builds the next one aside and swaps the reference in one step.

    A request takes the reference once and keeps using it, so requests in flight finish on the old
    index while new ones get the new one. Only `check` (under `_lock`) changes what is served.
    """

    def __init__(self, config: dict, location: str | None = None, partner: SearcherHolder | None = None) -> None:
        self.config = config
        self.location = location or config["ARTIFACTS"]  # the pointer followed; never changed by the service
        self.partner = partner  # the other arm of an A/B test, whose base a delta version of this one shares
        self.searcher: Searcher | None = None
        self.error: str | None = None  # why nothing is served yet
        self.refused: dict | None = None  # the newest version offered, when it failed verification
        self.transient: str | None = None  # the last error that will be retried (S3 unreachable...)
        self.loaded_at = 0.0
        self.load_seconds = 0.0  # how long the last successful load took (fetch, verify, warm up)
        self._pointer: str | None = None  # what the pointer said when the served (or refused) version was loaded
        self._failed: tuple[str | None, int, float] = (None, 0, 0.0)  # pointer, failures in a row, next try
        self._lock = threading.Lock()  # one reader of the pointer and one load at a time
        self._token = uuid.uuid4().hex[:12]  # this holder's record of what it serves (`store.mark_serving`)
        self._record: Path | None = None

    def start(self) -> None:
        """Load what the pointer names now. A failure is kept for /health (503 with the reason) and the worker goes
        on watching for a new version."""
        self.check(force=True)
        if self.searcher is None and self.error is None:
            self.error = self.transient or f"nothing to serve at {self.location}"

    def _read_pointer(self) -> str | None:
        """The pointer's token, read up to RETRIES times with doubling waits before the error is raised."""
        for attempt in range(RETRIES - 1):
            try:
                return pointer_of(self.location)
            except Exception:  # noqa: BLE001 - S3 or the network, for a moment: read it again
                time.sleep(BACKOFF_S * 2 ** attempt)
        return pointer_of(self.location)  # the last read raises what it meets

    def check(self, force: bool = False) -> Searcher | None:
        """Read the pointer and load the version it names if it moved since the last load (or `force`).

        Returns:
            The searcher loaded now, or None when nothing was loaded (no change, or a failure, which is recorded:
            `refused` for a version that failed verification, `transient` for an error retried at the next check).
        """
        with self._lock:
            try:
                pointer = self._read_pointer()
            except Exception as exc:
                log.warning("cannot read where %s points; will look again", self.location, exc_info=True)
                self.transient = f"{type(exc).__name__}: {exc}"
                return None
            if pointer is None and self.searcher is not None:
                return None  # the pointer is gone for a moment (a local rebuild): keep serving
            if pointer == self._pointer and not force:
                return None
            failed, failures, next_try = self._failed
            if not force and pointer == failed and time.monotonic() < next_try:
                return None  # the same version failed for another reason just now: back off
            log.info("loading %s (it points at %s)", self.location, pointer)
            try:
                searcher = self._load()
            except artifacts.ArtifactError as exc:
                log.exception("refused %s; still serving %s", pointer,
                              self.searcher.version if self.searcher else "nothing")
                self._pointer = pointer  # not tried again until the pointer moves
                self.refused = {"artifacts": self.location, "pointer": pointer,
                                "error": f"{type(exc).__name__}: {exc}", "at": time.time()}
                if self.searcher is None:
                    self.error = self.refused["error"]
                metrics.refused()
                return None
            except Exception as exc:
                failures = failures + 1 if pointer == failed else 1
                base = max(float(self.config["RELOAD_CHECK_S"]), 1.0)
                cap = TRANSIENT_BACKOFF_MAX_S if storage.is_transient(exc) else MAX_BACKOFF_S
                wait = min(cap, base * 2 ** (failures - 1))
                log.warning("could not load %s (failure %d): %s: %s; will try again in %.0f s", self.location,
                            failures, type(exc).__name__, exc, wait, exc_info=not storage.is_transient(exc))
                self._failed = (pointer, failures, time.monotonic() + wait)
                self.transient = f"{type(exc).__name__}: {exc}"
                if self.searcher is None:
                    self.error = self.transient
                return None
            self._pointer, self.transient, self._failed = pointer, None, (None, 0, 0.0)
            return searcher

    def _load(self) -> Searcher:
        """Fetch (from S3 if needed), verify, load and warm up what the pointer names, then make it current."""
        started = time.perf_counter()
        folder, hashed = local_folder(self.location, Path(self.config["ARTIFACTS_CACHE"]))
        reuse = self.searcher or (self.partner.searcher if self.partner is not None else None)
        searcher = Searcher(folder, threads=encoder_threads(self.config), reuse=reuse, hashed=hashed)
        searcher.warm_up()
        cache = Path(self.config["ARTIFACTS_CACHE"])
        if cache.is_dir():  # other workers' cache pruning keeps what this one serves
            record = mark_serving(cache, self._token, [searcher.folder, searcher.base.folder])
            if self._record is None:
                weakref.finalize(self, unmark_serving, record)
            self._record = record
        self.searcher, self.error, self.refused, self.loaded_at = searcher, None, None, time.time()
        self.load_seconds = time.perf_counter() - started
        metrics.serving(searcher.count)
        log.info("serving index %s (%d items, %s) from %s", searcher.version, searcher.count,
                 searcher.manifest["encoder"], self.location)
        return searcher

    def reload(self) -> Searcher:
        """Load what the pointer names now (an admin reload, after `move_pointer` or not); the other workers and
        instances follow the pointer within RELOAD_CHECK_S.

        Raises:
            ArtifactError: the version failed verification (the old index keeps serving).
            RuntimeError: the pointer could not be read or the version loaded (the cause is in the message).
        """
        searcher = self.check(force=True)
        if searcher is None:
            if self.refused:
                raise artifacts.ArtifactError(self.refused["error"])
            raise RuntimeError(self.transient or "nothing loaded")
        return searcher

    def get(self) -> Searcher:
        """Return the current searcher, or a 503 APIError while none is loaded."""
        searcher = self.searcher
        if searcher is None:  # why is for the operator (/health with the admin token, the log), not for a shopper
            raise APIError(503, "not_ready", "not ready: no index is loaded yet; retry in a few seconds",
                           retry_after=5)
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
        except Exception:
            log.exception("reload check failed")
        del holder


def init_app(app: Flask) -> None:
    """Create the holder on app.extensions, load the configured artifacts, and start watching them; with
    AB_ARTIFACTS, a second holder for the treatment arm, watched the same way.

    With LOAD_IN_BACKGROUND false (the default) the index is loaded and warmed up before create_app returns, so a
    gunicorn worker accepts no connection until it can answer; true loads in a thread (/health says 503 meanwhile).
    """
    holder = SearcherHolder(app.config)
    app.extensions[EXTENSION] = holder
    holders = [holder]
    if app.config["AB_ARTIFACTS"]:
        treatment = SearcherHolder(app.config, app.config["AB_ARTIFACTS"], partner=holder)
        holder.partner = treatment
        app.extensions[TREATMENT_EXTENSION] = treatment
        holders.append(treatment)
    for each in holders:
        if app.config["LOAD_IN_BACKGROUND"]:
            threading.Thread(target=each.start, name="index-loader", daemon=True).start()
        else:
            each.start()
        interval = float(app.config["RELOAD_CHECK_S"])
        if interval > 0:
            threading.Thread(target=_watch, args=(weakref.ref(each), interval), name="index-watcher",
                             daemon=True).start()


def get_holder() -> SearcherHolder:
    """Return the app's SearcherHolder (the control arm's, with an A/B test)."""
    return current_app.extensions[EXTENSION]


def get_treatment_holder() -> SearcherHolder | None:
    """Return the A/B test's treatment holder, or None when there is no test."""
    return current_app.extensions.get(TREATMENT_EXTENSION)


def get_searcher() -> Searcher:
    """Return the searcher serving this request (503 while loading): the treatment's for a client in arm B while
    it has one loaded (until then the control's, and `serving` says so)."""
    return serving()[1]


def serving() -> tuple[str, Searcher]:
    """The arm that serves this request and its searcher."""
    from service.experiment import CONTROL, TREATMENT, current_arm

    if current_arm() == TREATMENT:
        treatment = get_treatment_holder()
        if treatment is not None and treatment.searcher is not None:
            return TREATMENT, treatment.searcher
    return CONTROL, get_holder().get()
