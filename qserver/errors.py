"""One error hierarchy with stable codes; each boundary maps codes in one place."""

from __future__ import annotations


class QServerError(Exception):
    """Base of every error the services report to clients."""

    code = "error"

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class BadRequest(QServerError):
    """The request is malformed: bad JSON, unknown or mistyped fields, bad values."""

    code = "bad_request"


class NotFound(QServerError):
    """A position, uid or name that the request names does not exist."""

    code = "not_found"


class Refused(QServerError):
    """The request is valid but not allowed in the current state."""

    code = "refused"


class Locked(Refused):
    """The environment or queue is locked and the request carries no valid key."""

    code = "locked"


class Conflict(QServerError):
    """Another writer changed the state first (stale leader)."""

    code = "conflict"
