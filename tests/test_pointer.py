"""Where a worker's index comes from: the pointer ARTIFACTS names, read and loaded under one lock; transient errors
retried with backoff, only a version that fails verification refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline import index
from runtime import artifacts
from service import create_app, state


def holder_over(own_index: Path, tmp_path: Path) -> state.SearcherHolder:
    app = create_app({"ARTIFACTS": str(own_index / "index" / "current"), "LOAD_IN_BACKGROUND": False,
                      "RELOAD_CHECK_S": 0, "ARTIFACTS_CACHE": str(tmp_path / "cache")})
    return app.extensions[state.EXTENSION]


def test_concurrent_checks_load_a_moved_pointer_once(own_index: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    holder = holder_over(own_index, tmp_path)
    first = holder.get().version
    second = index.run(own_index, trees=4)["version"]  # moves index/current
    loads = []
    original = holder._load
    monkeypatch.setattr(holder, "_load", lambda: loads.append(1) or original())
    threads = [threading.Thread(target=holder.check) for _ in range(8)]  # the watcher and 7 reload requests
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(loads) == 1 and holder.get().version == second
    state.move_pointer(holder.location, first)  # what an admin reload with {"version": first} does
    assert holder.check().version == first and len(loads) == 2
    assert holder.check() is None and len(loads) == 2  # nothing moved: nothing loaded
    with pytest.raises(artifacts.ArtifactError, match="no version nope"):
        state.move_pointer(holder.location, "nope")
    with pytest.raises(artifacts.ArtifactError, match="not a version name"):
        state.move_pointer(holder.location, "../elsewhere")


def test_a_pointer_that_cannot_be_read_is_retried_with_backoff(own_index: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    holder = holder_over(own_index, tmp_path)
    second = index.run(own_index, trees=4)["version"]
    calls, sleeps = [], []
    real = state.pointer_of

    def flaky(location: str) -> str | None:
        calls.append(location)
        if len(calls) <= 2:
            raise ConnectionError("S3 unreachable")
        return real(location)

    monkeypatch.setattr(state, "pointer_of", flaky)
    # time.sleep is the time module's, shared by every thread of this process: the index watchers that earlier
    # tests' apps left running must keep sleeping for real, or they spin (and log) until memory runs out
    real_sleep, this_thread = time.sleep, threading.get_ident()
    monkeypatch.setattr(state.time, "sleep",
                        lambda s: sleeps.append(s) if threading.get_ident() == this_thread else real_sleep(s))
    assert holder.check().version == second  # two failed reads, then the third one
    assert sleeps == [state.BACKOFF_S, 2 * state.BACKOFF_S] and holder.transient is None
    calls.clear()
    monkeypatch.setattr(state, "pointer_of", lambda location: (_ for _ in ()).throw(ConnectionError("down")))
    assert holder.check() is None and "down" in holder.transient  # after RETRIES reads: the next check
    assert holder.refused is None and holder.get().version == second  # still serving, nothing refused


def test_only_a_version_that_fails_verification_is_refused(own_index: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    holder = holder_over(own_index, tmp_path)
    first = holder.get().version
    second = index.run(own_index, trees=4)["version"]
    failures = [RuntimeError("connection reset while downloading")]
    original = holder._load

    def flaky_load():
        if failures:
            raise failures.pop()
        return original()

    monkeypatch.setattr(holder, "_load", flaky_load)
    assert holder.check() is None and "connection reset" in holder.transient and holder.refused is None
    assert holder.check() is None  # backing off: not tried again at once
    holder._failed = (holder._failed[0], holder._failed[1], 0.0)  # the backoff has passed
    assert holder.check().version == second and holder.transient is None
    manifest = own_index / "index" / second / "manifest.json"
    items = own_index / "index" / index.run(own_index, trees=5)["version"] / "items.jsonl"
    items.write_bytes(items.read_bytes().replace(b"Northwind", b"Southwind"))  # same size: only the hash tells
    assert holder.check() is None and "does not match its sha256" in holder.refused["error"]
    assert holder.check() is None and holder.get().version == second  # refused once, not tried again
    state.move_pointer(holder.location, first)
    assert holder.check().version == first and holder.refused is None and manifest.is_file()
