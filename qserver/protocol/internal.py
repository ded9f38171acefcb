"""Messages between services under `<prefix>.internal.` (tolerant of unknown fields)."""

from __future__ import annotations

from typing import Literal

import msgspec


class HistoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Published by the history service whenever its content changes, and its info reply.

    After a `history_clear` it is sent as a request, which the leading queue service answers
    once its status carries it (read-your-writes: the clear is answered after that).
    """

    items_in_history: int
    plan_history_uid: str


class HistoryInfoRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Asks the history service for its `HistoryInfo` once it has read its stream up to
    `min_seq` (the sequence of a record just written; 0: at once)."""

    min_seq: int = 0


class LockCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Asks the queue service whether a request with this key may touch the queue or environment."""

    lock_key: str | None = None
    target: Literal["queue", "environment"] = "queue"


class LockCheckReply(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    msg: str = ""
