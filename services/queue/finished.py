"""An `ItemFinished` event that always fits in one JetStream message (ADR 8).

Pure logic. The result's texts are already cut to their bounds where the result was made,
but the record also carries the item (up to the request limit) and a failed item a copy
of it for the front of the queue, so an event can still be too large. Then it is made
smaller, step by step, until it fits: first the record loses the item's parameters
(`args`, `kwargs`, `meta`), then the result its texts. The outcome (exit status, times) and
the copy put back in the queue are always kept: the copy was stored once already, when
the item was added, so it fits by itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

from qserver.protocol.items import HistoryRecord
from qserver.protocol.queue_log import ItemFinished
from qserver.result_texts import bare

# Room for the headers of the append (expected last sequence, message id).
HEADER_ROOM = 4096
ESSENTIAL_KEYS = ("item_uid", "item_type", "name", "user", "user_group")

_encoder = msgspec.json.Encoder()


def size_of(event: ItemFinished) -> int:
    return len(_encoder.encode(event))


def without_parameters(record: HistoryRecord) -> HistoryRecord:
    item: dict[str, Any] = {k: record.item[k] for k in ESSENTIAL_KEYS if k in record.item}
    size = len(_encoder.encode(record.item))
    note = f"The item ({size:,} bytes) was too large to keep in the history with its parameters"
    msg = f"{note}. {record.result.msg}" if record.result.msg else note
    result = msgspec.structs.replace(record.result, msg=msg)
    return msgspec.structs.replace(record, item=item, result=result)


def without_texts(record: HistoryRecord, size: int) -> HistoryRecord:
    why = f"The outcome report was too large to store ({size:,} bytes)"
    return msgspec.structs.replace(record, result=bare(record.result, why))


def fit(event: ItemFinished, limit: int) -> ItemFinished:
    """`event` as it is if it takes at most `limit` bytes, else made smaller as above."""
    size = size_of(event)
    if size <= limit or event.record is None:
        return event
    record = without_parameters(event.record)
    event = msgspec.structs.replace(event, record=record)
    if size_of(event) <= limit:
        return event
    return msgspec.structs.replace(event, record=without_texts(record, size))


def smallest(event: ItemFinished) -> ItemFinished:
    """The smallest form of `event` (when a store refused one that seemed to fit)."""
    return fit(event, 0)


def limit_for(max_payload: int) -> int:
    """The largest event for a server with this `max_payload`."""
    return max_payload - HEADER_ROOM
