"""Plan history in memory, mirrored from the history stream; pure logic, no NATS."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from msgspec import UNSET

from qserver.errors import BadRequest, NotFound
from qserver.protocol import api
from qserver.protocol.internal import HistoryInfo
from qserver.protocol.items import HistoryRecord

_NAMESPACE = uuid.UUID("8f4e1c52-43a4-4b1e-9d8c-2f51a6f0b7e3")


class History:
    """The records of the history stream, in order, with their stream sequences."""

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self.records: list[tuple[int, HistoryRecord]] = []
        self.last_seq = 0
        self._seen: set[str] = set()

    def append(self, seq: int, record: HistoryRecord) -> bool:
        """Add a record read from the stream; repeats and old sequences are ignored."""
        if seq <= self.last_seq or record.record_uid in self._seen:
            self.last_seq = max(self.last_seq, seq)
            return False
        self.records.append((seq, record))
        self._seen.add(record.record_uid)
        self.last_seq = seq
        return True

    def info(self) -> HistoryInfo:
        # Derived from the stream's sequence range, so it is the same after a restart and
        # changes exactly when the content does.
        first = self.records[0][0] if self.records else self.last_seq + 1
        uid = uuid.uuid5(_NAMESPACE, f"{self._stream}:{first}:{self.last_seq}")
        return HistoryInfo(items_in_history=len(self.records), plan_history_uid=str(uid))

    def page(self, offset: int, limit: int | None) -> list[dict[str, Any]]:
        if offset < 0:
            raise BadRequest(f"offset must be zero or positive, not {offset}")
        if limit is not None and limit < 0:
            raise BadRequest(f"limit must be zero or positive, not {limit}")
        end = None if limit is None else offset + limit
        return [as_history_item(rec) for _, rec in self.records[offset:end]]

    def find_item(self, item_uid: str) -> HistoryRecord:
        """The latest record of the item `item_uid`."""
        for _, rec in reversed(self.records):
            if rec.item.get("item_uid") == item_uid:
                return rec
        raise NotFound(f"No item with uid {item_uid!r} is in the history")

    def find_run(self, run_uid: str) -> tuple[str, HistoryRecord] | None:
        """(full run uid, record) of the item that made the run; `run_uid` may be partial."""
        for _, rec in reversed(self.records):
            for uid in rec.result.run_uids:
                if uid.startswith(run_uid):
                    return uid, rec
        return None

    def purge_point(self, req: api.HistoryClear) -> tuple[int | None, int | None]:
        """What to purge for a clear request: (keep this many, or purge below this sequence)."""
        if req.size is not UNSET and req.item_uid is not UNSET:
            raise BadRequest("Ambiguous parameters: specify only one of size, item_uid")
        if req.size is not UNSET:
            return max(req.size, 0), None  # a negative size clears all, as in the reference
        if req.item_uid is not UNSET:
            for seq, rec in reversed(self.records):
                if rec.item.get("item_uid") == req.item_uid:
                    return None, seq + 1
            raise NotFound(f"No item with uid {req.item_uid!r} is in the history")
        return 0, None

    def purge(self, keep: int | None, below_seq: int | None) -> list[HistoryRecord]:
        """Mirror a stream purge in memory; return the records purged."""
        if keep is not None:
            dropped = self.records[: max(len(self.records) - keep, 0)]
            self.records = self.records[len(dropped) :]
        else:
            assert below_seq is not None
            dropped = [r for r in self.records if r[0] < below_seq]
            self.records = [r for r in self.records if r[0] >= below_seq]
        for _, rec in dropped:
            self._seen.discard(rec.record_uid)
        return [rec for _, rec in dropped]


def as_history_item(rec: HistoryRecord) -> dict[str, Any]:
    """The reference's history item: the queue item with a `result` key."""
    item = dict(rec.item)
    item["result"] = msgspec.to_builtins(rec.result)
    return item
