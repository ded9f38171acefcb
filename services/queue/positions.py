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
    """Index of an existing item named by a position; a position with no item is an error,
    in the reference's words: the index it tried and the position given."""
    raw = -1 if pos == "back" else 0 if pos == "front" else pos
    assert isinstance(raw, int)
    index = size + raw if raw < 0 else raw
    if not 0 <= index < size:
        raise NotFound(f"Index '{raw}' is out of range (parameter pos = '{pos}')")
    return index
