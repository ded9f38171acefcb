"""Queue items, queue mode, lock info and history records, as stored and as sent."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

ItemType = Literal["plan", "instruction", "function"]
# `rejected`: a proposal a reviewer turned down (it never ran; ADR 30).
ExitStatus = Literal["completed", "failed", "stopped", "aborted", "halted", "unknown", "rejected"]

# Keys the reference server keeps on an item; anything else in a submitted item is an error,
# except `result`, which history items carry and which is dropped when one is re-queued.
ITEM_KEYS = frozenset(
    {"item_type", "name", "args", "kwargs", "meta", "item_uid", "user", "user_group", "properties"}
)
DROPPED_ITEM_KEYS = frozenset({"result"})


class QueueItem(msgspec.Struct, frozen=True, kw_only=True):
    """A plan, instruction or function in the queue, shaped as in the reference server.

    Unset optional fields are left out of the JSON, as the reference leaves them out.
    """

    item_type: ItemType = "plan"
    name: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    meta: dict[str, Any] | list[dict[str, Any]] | UnsetType = UNSET
    item_uid: str | UnsetType = UNSET
    user: str | UnsetType = UNSET
    user_group: str | UnsetType = UNSET
    properties: dict[str, Any] | UnsetType = UNSET


class PlanQueueMode(msgspec.Struct, frozen=True, kw_only=True):
    """Queue execution mode: `loop` re-queues finished items, `ignore_failures` keeps going."""

    loop: bool = False
    ignore_failures: bool = False


class LockInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What is locked, by whom and when (the key itself is never sent)."""

    environment: bool = False
    queue: bool = False
    user: str | None = None
    note: str | None = None
    time: float | None = None
    time_str: str = ""
    emergency_lock_key_is_set: bool = False


class HistoryResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one executed item."""

    exit_status: ExitStatus
    run_uids: list[str] = msgspec.field(default_factory=list)
    scan_ids: list[int] = msgspec.field(default_factory=list)
    time_start: float = 0.0
    time_stop: float = 0.0
    msg: str = ""
    traceback: str = ""
    # Set only when `msg` or `traceback` was cut to keep the record storable (ADR 8): each
    # cut field's whole length in characters. `history_result_get` returns the whole text.
    truncated: dict[str, int] | UnsetType = UNSET
    # A rejected proposal (ADR 30): who turned it down and why.
    reviewer: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class ResultTexts(msgspec.Struct, frozen=True, kw_only=True):
    """The whole `msg` and `traceback` of a result whose stored copy was cut (ADR 8); kept in
    the object store `QS_<PREFIX>_RESULT_TEXTS` under the record uid."""

    msg: str = ""
    traceback: str = ""


class HistoryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One history stream message: the item, its result, and a unique id for de-duplication."""

    record_uid: str
    item: dict[str, Any]
    result: HistoryResult


def uid_of(item: QueueItem) -> str:
    """The uid of an item that is stored (stored items always have one)."""
    if not isinstance(item.item_uid, str):
        raise ValueError(f"item {item.name!r} has no item_uid")
    return item.item_uid
