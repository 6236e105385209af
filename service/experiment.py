"""A/B tests between two index versions: which arm a client is in, and who that client is.

A client is assigned by a stable hash of the experiment's name and its client id, so it sees the same index on
every request, on every worker and instance, with no state kept; renaming the experiment (AB_NAME) reshuffles
everyone. A request without a client id is served the control arm and is left out of the comparison.
"""

from __future__ import annotations

import hashlib

from flask import Request, current_app, g, request

from runtime.events import CLIENT_ID
from service.errors import APIError

CONTROL, TREATMENT = "A", "B"
CLIENT_HEADER = "X-Client-Id"


def arm_of(client_id: str | None, name: str, share: float) -> str:
    """The arm of a client: TREATMENT for a `share` of client ids (a uniform hash below it), else CONTROL.

    Args:
        client_id: the id the client keeps; None for an anonymous request (always CONTROL).
        name: the experiment's name, hashed with the id so that two experiments split clients independently.
        share: the treatment's share of clients, 0 to 1.
    """
    if not client_id or share <= 0.0:
        return CONTROL
    digest = hashlib.sha256(f"{name}\0{client_id}".encode()).digest()
    return TREATMENT if int.from_bytes(digest[:8], "big") < share * 2**64 else CONTROL


def client_id(request: Request) -> str | None:
    """The request's client id (the X-Client-Id header), checked; None when it has none.

    Raises:
        APIError: 400 bad_client_id for an id that is not 1 to 64 letters, digits or `._:-`.
    """
    value = request.headers.get(CLIENT_HEADER)
    if value is None or value == "":
        return None
    if not CLIENT_ID.fullmatch(value):
        raise APIError(400, "bad_client_id", f"{CLIENT_HEADER} must be 1 to 64 letters, digits or ._:- (a random id "
                                             "such as a UUID that the client keeps)")
    return value


def current_arm() -> str:
    """The arm of this request's client (cached on `g`): CONTROL unless AB_ARTIFACTS is set."""
    arm = g.get("arm")
    if arm is None:
        config = current_app.config
        arm = CONTROL
        if config["AB_ARTIFACTS"]:
            arm = arm_of(client_id_of_request(), config["AB_NAME"], float(config["AB_SHARE"]))
        g.arm = arm
    return arm


def client_id_of_request() -> str | None:
    """This request's client id, read once (cached on `g`)."""
    if "client_id" not in g:
        g.client_id = client_id(request)
    return g.client_id
