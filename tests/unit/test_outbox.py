"""The environment's outbox: documents reach the stream in order, once, whatever is lost on the way.

A small model of a JetStream stream (dedup by message id, `Nats-Expected-Last-Msg-Id`)
answers the outbox; tests drop, delay and duplicate its messages.
"""

from __future__ import annotations

from typing import Any

from services.worker.env.outbox import Outbox, Part


class Stream:
    """What nats-server does with a publish: dedup first, then the expected-last check."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.data: list[bytes] = []

    def publish(self, box: Outbox, part: Part) -> dict[str, Any]:
        msg_id = box.msg_id(part.n)
        if msg_id in self.ids:
            return {"stream": "D", "seq": self.ids.index(msg_id) + 1, "duplicate": True}
        last = self.ids[-1] if self.ids else ""
        if part.expect is not None and part.expect != last:
            return {
                "error": {
                    "code": 400,
                    "err_code": 10070,
                    "description": f"wrong last msg ID: {last}",
                }
            }
        self.ids.append(msg_id)
        self.data.append(part.data)
        return {"stream": "D", "seq": len(self.ids)}


def docs(box: Outbox, n: int, first: int = 1) -> None:
    for d in range(first, first + n):
        box.add(d, "p.docs.run.R", [f"doc{d}".encode()])


def deliver(box: Outbox, stream: Stream, now: float, lose: frozenset[int] = frozenset()) -> None:
    """Send what the outbox gives and answer each, except the lost message numbers."""
    for part in box.to_send(now):
        if part.n in lose:
            continue
        box.on_reply(box.epoch, part.n, stream.publish(box, part), now)


def test_documents_are_stored_in_order_and_counted() -> None:
    box, stream = Outbox("env", window=4), Stream()
    docs(box, 10)
    while box.unstored:
        deliver(box, stream, 0.0)
    assert stream.data == [f"doc{d}".encode() for d in range(1, 11)]
    assert box.stored_docs == 10 and box.bytes == 0 and box.stored_through(10)


def test_a_lost_message_stops_later_ones_until_it_is_sent_again() -> None:
    box, stream = Outbox("env", window=10, ack_timeout=5.0), Stream()
    docs(box, 6)
    # Message 3 is lost on the way (a dropped connection); 4..6 arrive and are refused.
    deliver(box, stream, 0.0, lose=frozenset({3}))
    assert stream.data == [b"doc1", b"doc2"]
    assert box.stored_docs == 2 and not box.stored_through(3)
    # The refusal named the last id the stream has: the outbox goes on from message 3.
    while box.unstored:
        deliver(box, stream, 1.0)
    assert stream.data == [f"doc{d}".encode() for d in range(1, 7)]


def test_an_ack_lost_is_resent_after_the_timeout_and_stored_once() -> None:
    box, stream = Outbox("env", window=10, ack_timeout=5.0), Stream()
    docs(box, 3)
    for part in box.to_send(0.0):
        stream.publish(box, part)  # stored, but no reply reaches the outbox
    assert box.to_send(1.0) == []  # waiting for the acks
    box.check(6.0)  # no ack within 5 s: send again from the oldest
    deliver(box, stream, 6.0)
    assert stream.data == [b"doc1", b"doc2", b"doc3"]  # the copies were dropped
    assert not box.unstored


def test_after_a_disconnect_the_publisher_goes_on_where_the_stream_stopped() -> None:
    box, stream = Outbox("env", window=10), Stream()
    docs(box, 5)
    sent = box.to_send(0.0)
    for part in sent[:2]:  # two reach the stream before the connection drops
        stream.publish(box, part)
    box.disconnected(0.1)
    docs(box, 2, first=6)
    while box.unstored:
        deliver(box, stream, 1.0)
    assert stream.data == [f"doc{d}".encode() for d in range(1, 8)]


def test_another_publisher_in_between_is_followed_not_fought() -> None:
    box, stream = Outbox("env-b", window=10), Stream()
    stream.ids.append("env-a.7")  # the previous environment's last document
    stream.data.append(b"a7")
    docs(box, 3)
    box.parts[0].expect = "env-a.6"  # as if it had read an older last id
    while box.unstored:
        deliver(box, stream, 0.0)
    assert stream.data == [b"a7", b"doc1", b"doc2", b"doc3"]


def test_a_document_in_parts_is_stored_when_its_last_part_is() -> None:
    box, stream = Outbox("env", window=2), Stream()
    box.add(1, "p.docs.run.R", [b"a", b"b", b"c"])
    assert [p.part for p in box.parts] == ["1/3", "2/3", "3/3"]
    deliver(box, stream, 0.0)
    assert box.stored_docs == 0 and not box.stored_through(1)
    deliver(box, stream, 0.0)
    assert box.stored_docs == 1 and stream.data == [b"a", b"b", b"c"]


def test_refusals_back_off_and_are_reported() -> None:
    box = Outbox("env", window=10)
    docs(box, 2)
    for part in box.to_send(0.0):
        box.on_reply(box.epoch, part.n, {"error": {"code": 503, "description": "no stream"}}, 0.0)
    assert "no stream" in box.last_error
    assert box.to_send(0.1) == []  # backing off
    assert [p.n for p in box.to_send(1.0)] == [1, 2]
