"""boto3's waiters for the states Beanstalk and EMR reach slowly, where botocore ships none that fits.

botocore's own waiters (`client.get_waiter`) cover "environment Ready" and "step complete" but not "Ready and
Green on this version", "application version processed", or an EMR step that ends INTERRUPTED; the same machinery
(`WaiterModel`, `create_waiter_with_client`) runs these from a model, so the polling, its delay and its attempts
are botocore's, not a hand-written loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from botocore.waiter import Waiter, WaiterModel, create_waiter_with_client


def waiter(client: Any, operation: str, acceptors: list[dict]) -> Waiter:
    """A waiter that calls `operation` until one of `acceptors` (botocore's waiter-2 format) matches."""
    model = WaiterModel({"version": 2, "waiters": {"Wait": {
        "operation": operation, "delay": 15, "maxAttempts": 40, "acceptors": acceptors}}})
    return create_waiter_with_client("Wait", model, client)


def config(wait_s: float, poll_s: float) -> dict[str, float]:
    """A WaiterConfig that polls every `poll_s` seconds for about `wait_s` seconds (one poll at least)."""
    attempts = math.ceil(wait_s / poll_s) if poll_s > 0 else math.ceil(wait_s)
    return {"Delay": poll_s, "MaxAttempts": max(1, attempts + 1)}


def path_is(expression: str, expected: object, state: str) -> dict:
    """An acceptor: `state` ("success", "failure" or "retry") when the JMESPath `expression` equals `expected`."""
    return {"state": state, "matcher": "path", "argument": expression, "expected": expected}


def literal(text: str) -> str:
    """`text` as a JMESPath raw string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wait(client: Any, operation: str, acceptors: list[dict], wait_s: float, poll_s: float,
         on_poll: Callable[[dict], None] | None = None, **params: Any) -> dict:
    """Call `operation` with `params` every `poll_s` seconds, for about `wait_s` seconds, until an acceptor
    matches; return the last response (a waiter returns none), after calling `on_poll` with each one.

    Raises:
        botocore.exceptions.WaiterError: a failure acceptor matched, or the time ran out (`last_response` says
            which state it was in).
    """
    responses: list[dict] = []

    def seen(parsed: dict, **_: Any) -> None:
        responses.append(parsed)
        if on_poll is not None:
            on_poll(parsed)

    event = f"after-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"
    client.meta.events.register(event, seen, unique_id=f"waiters-{id(responses)}")
    try:
        waiter(client, operation, acceptors).wait(**params, WaiterConfig=config(wait_s, poll_s))
    finally:
        client.meta.events.unregister(event, unique_id=f"waiters-{id(responses)}")
    return responses[-1]
