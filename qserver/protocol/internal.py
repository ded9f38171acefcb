"""Messages between services under `<prefix>.internal.` (tolerant of unknown fields)."""

from __future__ import annotations

from typing import Literal

import msgspec


class HistoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Published by the history service whenever its content changes, and its info reply."""

    items_in_history: int
    plan_history_uid: str


class LockCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Asks the queue service whether a request with this key may touch the queue or environment."""

    lock_key: str | None = None
    target: Literal["queue", "environment"] = "queue"


class LockCheckReply(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    msg: str = ""
