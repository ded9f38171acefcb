"""One error hierarchy with stable codes; each boundary maps codes in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class QServerError(Exception):
    """Base of every error the services report to clients."""

    code = "error"

    def __init__(self, msg: str, *, bare: bool = False) -> None:
        super().__init__(msg)
        self.msg = msg
        # Sent without the method's prefix (`Error: `): the reference's state refusals,
        # which its manager returns rather than raises (services/runtime/refusals.py).
        self.bare = bare


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


def decoded(decode: Callable[[bytes], T], body: bytes, where: str) -> T:
    """`decode(body)`; a body that is not JSON, too deep or of the wrong shape is a
    BadRequest that names `where` and the problem."""
    import msgspec

    try:
        return decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(f"Invalid request to '{where}': {e}") from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"Invalid request to '{where}': malformed JSON ({e})") from None
    except RecursionError:
        raise BadRequest(f"Invalid request to '{where}': JSON nesting is too deep") from None
