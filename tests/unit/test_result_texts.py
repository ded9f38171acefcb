"""Failure reports cut to a bounded size, and queue events that always fit (ADR 8)."""

from __future__ import annotations

import msgspec

from qserver.protocol.items import HistoryRecord, HistoryResult, QueueItem
from qserver.protocol.queue_log import ItemFinished
from qserver.result_texts import MSG_KEPT, TRACEBACK_KEPT, bound, cut
from services.queue import finished

UID = "0f5e8d1c-1111-2222-3333-444455556666"


def test_short_texts_are_left_alone() -> None:
    result = HistoryResult(exit_status="failed", msg="Plan failed: boom", traceback="tb\n" * 100)
    same, texts = bound(result, UID)
    assert same is result and texts is None
    assert "truncated" not in msgspec.json.decode(msgspec.json.encode(same))


def test_a_long_text_keeps_head_and_tail_around_a_marker() -> None:
    text = "H" * 5000 + "M" * 1_000_000 + "T" * 7000
    out = cut(text, TRACEBACK_KEPT, "somewhere")
    head, tail = TRACEBACK_KEPT
    assert out.startswith("H" * head) and out.endswith("T" * tail)
    assert f"{len(text) - head - tail:,} characters cut here; the whole text: somewhere" in out
    assert len(out) < head + tail + 200
    assert cut(out, TRACEBACK_KEPT, "somewhere") is out  # cutting twice changes nothing


def test_bound_reports_what_was_cut_and_returns_the_whole_texts() -> None:
    whole = HistoryResult(exit_status="failed", msg="m" * 50_000, traceback="t" * 3_000_000)
    result, texts = bound(whole, UID)
    assert result.truncated == {"msg": 50_000, "traceback": 3_000_000}
    assert texts is not None and (texts.msg, texts.traceback) == (whole.msg, whole.traceback)
    assert f"`qserver history result {UID}`" in result.traceback
    assert len(result.msg) < sum(MSG_KEPT) + 256
    assert bound(result, UID) == (result, None)


def event(item_kwargs: int, text: int) -> ItemFinished:
    item = QueueItem(name="count", kwargs={"md": {"blob": "b" * item_kwargs}}, item_uid=UID)
    record = HistoryRecord(
        record_uid="r1",
        item=msgspec.to_builtins(item),
        result=HistoryResult(exit_status="failed", msg="m" * text, time_start=1.0, time_stop=2.0),
    )
    return ItemFinished(uid=UID, record_uid="r1", requeue_front=item, queue_uid="q", record=record)


def test_an_event_that_fits_is_unchanged() -> None:
    ev = event(1000, 1000)
    assert finished.fit(ev, finished.limit_for(1_048_576)) is ev


def test_a_large_item_loses_its_parameters_in_the_record_not_in_the_queue() -> None:
    ev = event(600_000, 100)
    small = finished.fit(ev, finished.limit_for(1_048_576))
    assert finished.size_of(small) <= finished.limit_for(1_048_576)
    assert small.requeue_front == ev.requeue_front  # the copy for the queue is whole
    assert small.record is not None
    assert small.record.item == {"item_uid": UID, "item_type": "plan", "name": "count"}
    assert small.record.result.msg.startswith(
        "The item (600,"
    ) and small.record.result.msg.endswith("m" * 100)
    assert small.record.result.exit_status == "failed"


def test_the_smallest_event_keeps_the_outcome_and_says_why() -> None:
    ev = event(600_000, 500_000)
    small = finished.smallest(ev)
    assert small.record is not None
    assert small.record.result.exit_status == "failed"
    assert (small.record.result.time_start, small.record.result.time_stop) == (1.0, 2.0)
    assert small.record.result.msg.startswith("The outcome report was too large to store")
    assert small.requeue_front == ev.requeue_front
    # What is left: the copy for the queue and a record of a few hundred bytes.
    assert finished.size_of(small) < len(msgspec.json.encode(ev.requeue_front)) + 1000
