"""Identity that NATS vouches for: requests on `<prefix>.as.<user>.<group>.api.<method>`.

NATS permissions let each client user publish only under its own name and its own groups
(services.stack.nats_permissions); a service answering such a subject takes `user` and
`user_group` from it and overwrites whatever the body says (ADR 24).
"""

from __future__ import annotations

from typing import Any

import msgspec

from qserver.errors import BadRequest, decoded
from qserver.protocol.subjects import IDENTITY_METHODS


def identity_subject(api_subject: str) -> str:
    """`<prefix>.as.*.*.api.<method>` for the subject `<prefix>.api.<method>`."""
    head, sep, method = api_subject.rpartition(".api.")
    if not sep:
        raise ValueError(f"not an API subject: {api_subject!r}")
    return f"{head}.as.*.*.api.{method}"


def subject_identity(subject: str) -> tuple[str, str]:
    """(user, group) from `<prefix>.as.<user>.<group>.api.<method>`."""
    head = subject.rpartition(".api.")[0]
    *_, user, group = head.split(".")
    return user, group


def vouched_params(method: str, subject: str, data: bytes) -> bytes:
    """The request's params with the subject's identity in place of the body's."""
    params: Any = decoded(msgspec.json.decode, data or b"{}", method)
    if not isinstance(params, dict):
        raise BadRequest(f"Invalid request to '{method}': the params must be a JSON object")
    user, group = subject_identity(subject)
    sets_user, sets_group = IDENTITY_METHODS[method]
    if sets_user:
        params["user"] = user
    if sets_group:
        params["user_group"] = group
    return msgspec.json.encode(params)
