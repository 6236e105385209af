"""Limits one client cannot push past, so that an abusive one never costs honest shoppers an answer.

The request rate per client is nginx's (`.platform/nginx`, `limit_req`): it sees every worker's requests at once.
What only the app can see is limited here and in the modules that parse a request: pixels decoded
(`uploads.decode`, MAX_DECODED_PIXELS), filter values (`params.parse_filters`, MAX_FILTER_VALUES), how far
collapse widens (`Searcher.search`, MAX_COLLAPSE_FETCH), and `image_url` downloads at once (below).
docs/service.md, "Limits", lists them with their defaults.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from service import metrics
from service.config import DEFAULTS
from service.errors import APIError

_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _slots(size: int) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        if size not in _SLOTS:
            _SLOTS[size] = threading.BoundedSemaphore(size)
        return _SLOTS[size]


@contextlib.contextmanager
def url_fetch_slot(config: dict) -> Iterator[None]:
    """Hold one of this worker's MAX_URL_FETCHES download slots while an `image_url` is fetched.

    It never waits: a worker whose slots are all taken (by slow URLs) answers 503 with Retry-After at once, and
    its other threads stay free for uploads and "more like this" queries.

    Raises:
        APIError: 503 `url_fetch_busy` when every slot is taken.
    """
    size = int(config.get("MAX_URL_FETCHES", DEFAULTS["MAX_URL_FETCHES"]))
    slots = _slots(size)
    if not slots.acquire(blocking=False):
        metrics.limited("url_fetches")
        raise APIError(503, "url_fetch_busy", f"this server is already downloading {size} image_url photos; "
                                              "retry in a second, or upload the photo itself", retry_after=1)
    try:
        yield
    finally:
        slots.release()

