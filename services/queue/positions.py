"""Pure position arithmetic for the queue: where to insert, which item a position names."""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from qserver.errors import BadRequest, NotFound
from qserver.protocol.api import Pos


def given(**named: object) -> list[str]:
    """Names of the keyword arguments that were set (not UNSET)."""
    return [name for name, value in named.items() if value is not UNSET]


def only_one(**named: object) -> str | None:
    """The one parameter that is set, None if none is; more than one is an error."""
    names = given(**named)
    if len(names) > 1:
        raise BadRequest(f"Ambiguous parameters: specify only one of {', '.join(names)}")
    return names[0] if names else None


def insert_index(pos: Pos | UnsetType, size: int) -> int:
    """Index where a new item goes: any integer is accepted and clamped to the queue's ends.

    A negative position counts from the back so that -1 inserts before the last item,
    as in the reference server.
    """
    if pos is UNSET or pos == "back":
        return size
    if pos == "front":
        return 0
    assert isinstance(pos, int)
    index = size + pos if pos < 0 else pos
    return min(max(index, 0), size)


def existing_index(pos: Pos, size: int) -> int:
    """Index of an existing item named by a position; a position with no item is an error."""
    if size == 0:
        raise NotFound("The queue is empty")
    if pos == "front":
        return 0
    if pos == "back":
        return size - 1
    assert isinstance(pos, int)
    index = size + pos if pos < 0 else pos
    if not 0 <= index < size:
        raise NotFound(
            f"Position {pos} is out of range: the queue has {size} item{'s' if size != 1 else ''}"
        )
    return index
