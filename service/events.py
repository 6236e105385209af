"""The analytics event log: searches put records on a bounded queue; a thread writes them, another ships them.

A search only builds a small dict and calls `put_nowait` (a few microseconds); JSON, files and S3 happen in two
background threads. When the queue is full (the disk or the writer cannot keep up) the record is dropped and
counted in /metrics (`visual_search_events_dropped_total`), so a search never waits on analytics.

The writer appends to one file per stream in `<EVENTS_DIR>/open/` and flushes after every batch it takes from the
queue, so a record is in the kernel's page cache within milliseconds of its search: a worker killed with SIGKILL
loses only what was still queued. A file is closed (moved to its `dt=` partition, `runtime.events`) when its UTC
day ends, when it is EVENTS_ROTATE_S old, or past EVENTS_ROTATE_MB. The shipper moves closed files to
EVENTS_TARGET (an s3://bucket/prefix or a folder) and removes them here once stored; files a dead worker left
open are closed by the next worker that starts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from runtime import events, storage
from service import metrics

log = logging.getLogger(__name__)

EXTENSION = "visual_search_events"
BATCH = 512  # records written between two flushes at most
IDLE_WAKE_S = 1.0  # how often an idle writer wakes to close a file that is due
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EventLog:
    """A bounded queue of records, the thread that writes them to rotating JSONL files, and the one that ships them.

    Args:
        folder: where files are written (EVENTS_DIR); closed files stay here when there is no target.
        target: an s3://bucket/prefix or a folder that closed files are moved to; "" keeps them in `folder`.
        queue_size: records waiting to be written at most; more are dropped and counted.
        rotate_s: a file is closed this long after it was opened (the delay before it can be shipped).
        rotate_bytes: or once it holds this much.
        ship_s: how often the shipper looks for closed files.
        retention_days: closed files older than this are deleted from `folder` when there is no target.
    """

    def __init__(self, folder: Path, target: str = "", queue_size: int = 10_000, rotate_s: float = 300.0,
                 rotate_bytes: int = 64 * 2**20, ship_s: float = 30.0, retention_days: int = 90) -> None:
        self.folder = Path(folder)
        self.target = target
        self.rotate_s, self.rotate_bytes, self.ship_s = rotate_s, rotate_bytes, ship_s
        self.retention_days = retention_days
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.started = int(time.time())
        self.pid = os.getpid()
        self._seq = 0
        self._open: dict[str, tuple[Any, Path, str, float]] = {}  # stream -> (file, path, day, opened at)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        (self.folder / events.OPEN_DIR).mkdir(parents=True, exist_ok=True)

    # the hot path ------------------------------------------------------------------------------------------------
    def emit(self, stream: str, record: dict) -> bool:
        """Queue one record (its `timestamp` as epoch seconds); False, counted as dropped, when the queue is full."""
        try:
            self.queue.put_nowait((stream, record))
            return True
        except queue.Full:
            metrics.event_dropped(stream, "queue_full")
            return False

    # the writer --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Close what dead workers left open, then start the writer and (with a target, or a retention) the
        shipper; at interpreter exit the queue is drained and the files closed."""
        self.recover()
        for name, loop in (("events-writer", self._write_loop), ("events-shipper", self._ship_loop)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        atexit.register(self.close)

    def _write_loop(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=IDLE_WAKE_S)
            except queue.Empty:
                first = None
            if first is None and self._stop.is_set():
                self._close_all()
                return
            batch = [] if first is None else [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            waiting = [done for stream, done in batch if stream is None]  # flush() asked to close everything
            batch = [item for item in batch if item[0] is not None]
            try:
                self._write(batch)
            except Exception:  # a full disk, a removed folder: count the loss and keep the writer alive
                log.exception("could not write %d analytics records", len(batch))
                for stream, _ in batch:
                    metrics.event_dropped(stream, "write_failed")
            if waiting:
                self._close_all()
                for done in waiting:
                    done.set()
            if self._stop.is_set() and self.queue.empty():
                self._close_all()
                return
            self._rotate_due()

    def _write(self, batch: list[tuple[str, dict]]) -> None:
        if not batch:
            return
        touched = set()
        for stream, record in batch:
            seconds = record["timestamp"]
            day = events.day_of(seconds)
            record["timestamp"] = events.iso_time(seconds)
            handle = self._file(stream, day)
            handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            touched.add(stream)
        for stream in touched:
            handle = self._open[stream][0]
            handle.flush()  # into the page cache: a SIGKILL of this worker no longer loses it
        metrics.events_written(len(batch))

    def _file(self, stream: str, day: str):
        current = self._open.get(stream)
        if current is not None and current[2] != day:
            self._close(stream)
            current = None
        if current is None:
            self._seq += 1
            name = f"{stream}.{day}.{HOST}.{self.pid}.{self.started}.{self._seq}{events.SUFFIX}"
            path = self.folder / events.OPEN_DIR / name
            current = (open(path, "ab"), path, day, time.monotonic())  # noqa: SIM115 - kept open across batches
            self._open[stream] = current
        return current[0]

    def _rotate_due(self) -> None:
        now = time.monotonic()
        for stream, (handle, _, _, opened) in list(self._open.items()):
            if now - opened >= self.rotate_s or handle.tell() >= self.rotate_bytes:
                self._close(stream)

    def _close(self, stream: str) -> None:
        handle, path, _, _ = self._open.pop(stream)
        handle.close()
        close_file(self.folder, path)

    def _close_all(self) -> None:
        for stream in list(self._open):
            self._close(stream)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is written and the open files are closed into their partitions
        (tests; the report reads closed files only)."""
        done = threading.Event()
        self.queue.put((None, done), timeout=timeout)  # the writer sets it once what came before is written
        done.wait(timeout)

    def close(self) -> None:
        """Drain the queue, close the files and ship what the target can take in a few seconds (at exit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(queue.Full):  # wake the writer now rather than at its next idle check
            self.queue.put_nowait((None, threading.Event()))
        writer = self._threads[0] if self._threads else None
        if writer is not None:
            writer.join(timeout=10)
        if self.target:
            try:
                self.ship()
            except Exception:
                log.warning("could not ship the last analytics files; the next worker will", exc_info=True)

    # the shipper -------------------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Close the files that workers no longer alive left open (they were flushed up to their end) and release
        files a dead shipper had claimed; return how many were recovered."""
        recovered = 0
        for path in (self.folder / events.OPEN_DIR).glob(f"*{events.SUFFIX}"):
            parts = path.name.split(".")
            if len(parts) == 7 and parts[3].isdigit() and int(parts[3]) != self.pid and not _alive(int(parts[3])):
                close_file(self.folder, path)
                recovered += 1
        for path in self.folder.glob("*/dt=*/*.shipping-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                path.rename(path.with_name(path.name.split(".shipping-")[0]))
                recovered += 1
        if recovered:
            log.info("recovered %d analytics files left by workers that died", recovered)
        return recovered

    def _ship_loop(self) -> None:
        while not self._stop.wait(self.ship_s):
            try:
                self.ship()
            except Exception:
                log.warning("shipping analytics files failed; will try again", exc_info=True)

    def ship(self) -> int:
        """Move every closed file to the target (or, without one, delete those past the retention); return how
        many were shipped. A file is claimed by a rename first, so two workers never ship the same one."""
        shipped = 0
        for path in sorted(self.folder.glob(f"*/dt=*/*{events.SUFFIX}")):
            rel = path.relative_to(self.folder).as_posix()
            if not self.target:
                day = events.PARTITION.search(rel).group(1)
                if time.time() - time.mktime(time.strptime(day, "%Y-%m-%d")) > (self.retention_days + 1) * 86400:
                    path.unlink(missing_ok=True)
                continue
            claimed = path.with_name(f"{path.name}.shipping-{self.pid}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another worker took it
            try:
                store(claimed, self.target, rel)
            except Exception:
                claimed.rename(path)
                metrics.events_shipped("failed")
                raise
            claimed.unlink()
            metrics.events_shipped("ok")
            shipped += 1
        return shipped


def close_file(folder: Path, path: Path) -> Path:
    """Move a finished file from open/ into its partition, named without its stream and day."""
    stream, day, rest = path.name.split(".", 2)
    closed = folder / events.partition(stream, day) / rest.replace(".", "-", 3)
    closed.parent.mkdir(parents=True, exist_ok=True)
    if path.stat().st_size == 0:
        path.unlink()
        return closed
    os.replace(path, closed)
    return closed


def store(path: Path, target: str, rel: str) -> None:
    """Put one closed file at `target/rel`: an S3 object, or a file in a folder (written whole, then renamed)."""
    if target.startswith("s3://"):
        bucket, prefix = storage.split_s3(target.rstrip("/"))
        key = f"{prefix}/{rel}" if prefix else rel
        storage.s3_client().upload_file(str(path), bucket, key)
        return
    destination = storage.inside(Path(target), rel, "an events file")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    shutil.copyfile(path, partial)
    os.replace(partial, destination)


def init_app(app: Flask) -> None:
    """Start this worker's event log when EVENTS_DIR is set (none otherwise: searches record nothing)."""
    folder = app.config["EVENTS_DIR"]
    if not folder:
        return
    event_log = EventLog(Path(folder), app.config["EVENTS_TARGET"], int(app.config["EVENTS_QUEUE"]),
                          float(app.config["EVENTS_ROTATE_S"]), int(float(app.config["EVENTS_ROTATE_MB"]) * 2**20),
                          float(app.config["EVENTS_SHIP_S"]), int(app.config["EVENTS_RETENTION_DAYS"]))
    event_log.start()
    app.extensions[EXTENSION] = event_log
    metrics.events_on()


def get_event_log() -> EventLog | None:
    """This app's event log, or None when events are off."""
    return current_app.extensions.get(EXTENSION)
