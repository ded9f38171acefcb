"""The client's copy of the pushed status: when it may answer `status` (ADR 29)."""

from __future__ import annotations

import calendar
import time

from qserver.protocol.status import STATUS_EVERY_HEADER, STATUS_SEQ_HEADER, parse_status_seq
from qserver.status_mirror import (
    FRESH_MARGIN_S,
    STORED_TIME_HEADER,
    StatusMirror,
    stored_time,
)


def event(epoch: str, n: int, every: str = "1") -> dict[str, str]:
    return {STATUS_SEQ_HEADER: f"{epoch}:{n}", STATUS_EVERY_HEADER: every}


def test_status_numbers_parse_and_malformed_ones_are_none() -> None:
    assert parse_status_seq("ab12:7") == ("ab12", 7)
    for bad in (None, "", "7", "ab:", ":3", "ab:x", "ab:-1"):
        assert parse_status_seq(bad) is None, bad


def test_a_fresh_event_answers_until_a_reply_numbers_a_later_status() -> None:
    m = StatusMirror()
    assert m.current() is None
    m.on_event(b"s5", event("e", 5))
    assert m.current() == b"s5"
    m.on_reply("queue_item_add", b"{}", {STATUS_SEQ_HEADER: "e:6"})
    assert m.current() is None  # the write's status has not arrived yet
    m.on_event(b"s6", event("e", 6))
    assert m.current() == b"s6"
    assert m.hits == 2


def test_an_event_of_another_epoch_is_not_current_after_a_reply_of_the_new_one() -> None:
    m = StatusMirror()
    m.on_event(b"old", event("a", 40))
    m.on_reply("queue_item_add", b"{}", {STATUS_SEQ_HEADER: "b:2"})
    assert m.current() is None  # a new leader numbers from its own start
    m.on_event(b"new", event("b", 2))
    assert m.current() == b"new"


def test_an_older_event_never_replaces_a_newer_copy() -> None:
    m = StatusMirror()
    m.on_event(b"s9", event("e", 9))
    m.on_event(b"s8", event("e", 8))
    assert m.current() == b"s9"
    m.on_reply("status", b"s7", {STATUS_SEQ_HEADER: "e:7"})
    assert m.current() == b"s9"


def test_a_write_answered_without_a_number_sends_status_to_the_service_until_it_answers() -> None:
    m = StatusMirror()
    m.on_event(b"s3", event("e", 3))
    m.on_reply("history_get", b"{}", None)  # a read: no effect
    assert m.current() == b"s3"
    m.on_reply("history_clear", b"{}", None)
    assert m.current() is None
    m.on_event(b"s4", event("e", 4))
    assert m.current() is None  # may have been published before the history's news
    m.on_reply("status", b"s5", {STATUS_SEQ_HEADER: "e:5"})
    assert m.current() == b"s5"


def test_events_without_numbers_are_never_answered_from() -> None:
    m = StatusMirror()
    m.on_event(b"plain", {})
    m.on_event(b"bad", {STATUS_SEQ_HEADER: "nonsense"})
    assert m.current() is None


def test_an_event_is_trusted_only_for_its_period_and_the_margin() -> None:
    m = StatusMirror()
    m.on_event(b"s1", event("e", 1, every="0"))
    assert m.current() == b"s1"
    deadline = time.monotonic() + 30.0
    while m.current() is not None:
        assert time.monotonic() < deadline, "the copy stayed trusted"
        time.sleep(0.05)
    assert m.every == 0.0 and FRESH_MARGIN_S > 0
    m.forget()
    m.on_event(b"s2", event("e", 2, every="junk"))
    assert m.current() == b"s2"  # an unreadable period: the default


def test_a_kept_status_is_accepted_only_if_numbered_and_current() -> None:
    """nats-server's copy of the last status (ADR 35): its freshness is nats-server's, its
    number is checked here as a followed event's is."""
    m = StatusMirror()
    assert m.accepts(event("e", 1))  # nothing seen yet: any numbered status
    assert not m.accepts({})  # a queue service without numbers
    assert not m.accepts(None)
    m.on_reply("queue_item_add", b"{}", {STATUS_SEQ_HEADER: "e:7"})
    assert not m.accepts(event("e", 6))  # older than this client's write
    assert m.accepts(event("e", 7)) and m.accepts(event("e", 9))
    assert not m.accepts(event("f", 9))  # another leader's, before a reply of its own
    m.on_reply("history_clear", b"{}", {})  # a write answered without a number
    assert not m.accepts(event("e", 9))
    m.on_reply("status", b"{}", {STATUS_SEQ_HEADER: "e:9"})  # asked of the service
    assert m.accepts(event("e", 9))
    assert m.hits == 0  # acceptance is not an answer from this copy


def test_nats_servers_copy_answers_while_younger_than_its_period_and_the_margin() -> None:
    """Its freshness is read from when nats-server stored it (ADR 35)."""
    m = StatusMirror()
    stored = {**event("e", 3), STORED_TIME_HEADER: "2026-12-03T16:52:12.500000000Z"}
    t = stored_time(stored[STORED_TIME_HEADER])
    assert t == calendar.timegm((2026, 12, 3, 16, 52, 12, 0, 0, 0)) + 0.5
    assert m.on_stored(stored, now=t + 1.0 + FRESH_MARGIN_S - 0.01)
    assert not m.on_stored(stored, now=t + 1.0 + FRESH_MARGIN_S + 0.01)  # the leader is gone
    slow = {**stored, STATUS_EVERY_HEADER: "5"}
    assert m.on_stored(slow, now=t + 5.0)  # a longer announced period
    assert not m.on_stored({**event("e", 3)}, now=t)  # no stored time
    assert not m.on_stored({**stored, STORED_TIME_HEADER: "yesterday"}, now=t)
    m.on_reply("queue_item_add", b"{}", {STATUS_SEQ_HEADER: "e:4"})
    assert not m.on_stored(stored, now=t)  # fresh, but older than this client's write
