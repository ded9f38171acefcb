"""The gateway's own errors and the one place where error codes become HTTP statuses."""

from __future__ import annotations

from qserver.errors import QServerError


class Unauthorized(QServerError):
    """No credentials, or credentials that match no key."""

    code = "unauthorized"


class Forbidden(QServerError):
    """The caller is known but lacks the scope the route needs."""

    code = "forbidden"


class Unavailable(QServerError):
    """NATS, or the service behind a method, does not answer."""

    code = "unavailable"


class ClientGone(QServerError):
    """The client left before its request was complete (nobody reads the answer)."""

    code = "client_gone"


HTTP_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unavailable": 503,
    "client_gone": 400,
    "too_many_requests": 429,
    "unprocessable": 422,
}


def http_status(error: QServerError) -> int:
    """The HTTP status of an error; a code without a mapping is a client error (400)."""
    return HTTP_STATUS.get(error.code, 400)
