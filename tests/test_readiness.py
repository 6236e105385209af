"""No request reaches a gunicorn worker that has not loaded its index: at start-up, and when a worker is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, Load, free_port, health, launch_gunicorn, multipart, stop, timed, wait_for_workers

# Imported by gunicorn instead of application.py: the first worker to warm up takes FIRST_S, every other LATER_S,
# so a window exists in which one worker serves and another is still loading.
SLOW_APP = '''
import os, time
from service.searcher import Searcher

_warm_up = Searcher.warm_up


def warm_up(self):
    try:
        os.close(os.open(os.path.join(os.environ["SLOW_DIR"], "first"), os.O_CREAT | os.O_EXCL))
        time.sleep(float(os.environ["FIRST_S"]))
    except FileExistsError:
        time.sleep(float(os.environ["LATER_S"]))
    _warm_up(self)


Searcher.warm_up = warm_up
from application import application  # noqa: E402
'''


@pytest.fixture()
def slow_server(own_index: Path, tmp_path: Path):
    """gunicorn (2 workers) over an index whose load takes seconds, with a gunicorn timeout shorter than the load:
    yields (base URL, process, log path) as soon as it is started."""
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "slow_app.py").write_text(SLOW_APP)
    port, log = free_port(), tmp_path / "gunicorn.log"
    env = {"PYTHONPATH": f"{tmp_path / 'slow'}:{ROOT}", "SLOW_DIR": str(tmp_path / "slow"), "FIRST_S": "1",
           "LATER_S": "8", "GUNICORN_TIMEOUT": "4", "LOG_LEVEL": "info"}
    process = launch_gunicorn(own_index / "index" / "current", port, 2, tmp_path / "cache", env=env, log=log,
                              app="slow_app:application")
    try:
        yield f"http://127.0.0.1:{port}", process, log
    finally:
        stop(process)


def search_request(own_index: Path, base: str) -> tuple[str, bytes, str]:
    image = next((own_index / "catalog" / "images").rglob("*.jpg"))
    body, content_type = multipart("image", image.name, image.read_bytes())
    return f"{base}/api/search?k=3", body, content_type


def first_ok(base: str, process, deadline_s: float = 120) -> None:
    """Ask /health until it answers 200 (a connection waits in the backlog until a worker accepts it)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "gunicorn exited"
        if timed(f"{base}/health", timeout=deadline_s)[1] == 200:
            return
        time.sleep(0.05)
    pytest.fail("/health never answered 200")


def test_requests_fired_at_the_first_health_200_all_succeed(slow_server, own_index: Path) -> None:
    base, process, log = slow_server
    first_ok(base, process)
    request = search_request(own_index, base)
    with Load([request, (f"{base}/health", None, None)], clients=4) as load:
        # until the slow worker has loaded too (its first answer), then a little more
        pids = wait_for_workers(base, 2, 120, process)
        time.sleep(1)
    text = log.read_text()
    print(f"\nfrom the first 200 of /health until both workers served: {load.counts()}")
    assert "WORKER TIMEOUT" not in text  # the boot heartbeat kept the loading worker alive past the 4 s timeout
    assert len(pids) == 2 and len(load.statuses) >= 20, (load.counts(), text[-2000:])
    assert load.counts() == {200: len(load.statuses)}, load.counts()


def test_a_killed_worker_is_replaced_without_a_503(slow_server, own_index: Path) -> None:
    base, process, _log = slow_server
    first_ok(base, process)
    pids = wait_for_workers(base, 2, 120, process)
    victim = min(pids)
    request = search_request(own_index, base)
    with Load([request, (f"{base}/health", None, None)], clients=4) as load:
        time.sleep(1)
        os.kill(victim, signal.SIGKILL)
        killed_at = len(load.statuses)
        # the replacement (LATER_S of load) must come up and serve while the load goes on
        replaced = _wait_for_new_worker(base, pids, process)
        time.sleep(1)
    counts = load.counts()
    print(f"\nkill -9 of one of 2 workers under load, until its replacement served: {counts} (0: connection lost)")
    assert replaced not in pids and killed_at > 0
    assert 503 not in counts, counts
    # Only the connections in flight on the killed worker may be lost: at most one per client.
    assert set(counts) <= {200, 0} and counts.get(0, 0) <= 4, counts
    assert counts[200] >= 20, counts


def _wait_for_new_worker(base: str, old: set[int], process, deadline_s: float = 120) -> int:
    """Ask /health until a worker not in `old` answers; return its pid."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "gunicorn exited"
        try:
            pid = int(health(base)["worker"])
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid not in old:
            return pid
        time.sleep(0.1)
    pytest.fail("no new worker answered")
