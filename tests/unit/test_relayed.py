"""Which messages are JetStream's (qserver.jsutil.written_by_jetstream, ADR 11 amendment)."""

from __future__ import annotations

import pytest

from qserver.jsutil import written_by_jetstream as from_jetstream


@pytest.mark.parametrize(
    ("reply", "headers", "data"),
    [
        ("$JS.ACK.QS_DOCS.c.1.2.3.4.0", None, b"\x92\xa5start"),  # a consumer's delivery
        ("$JS.FC.QS_DOCS.x.y", None, b""),  # flow control
        ("", {"Nats-Stream": "QS_PROGRESS", "Nats-Sequence": "3"}, b"{}"),  # a direct get
        ("", {"Status": "100", "Description": "Idle Heartbeat"}, b""),
        ("", None, b'{"type":"io.nats.jetstream.api.v1.stream_info_response","total":0}'),
    ],
)
def test_jetstream_messages_are_told_apart(
    reply: str, headers: dict[str, str] | None, data: bytes
) -> None:
    assert from_jetstream(reply, headers, data)


@pytest.mark.parametrize(
    ("reply", "headers", "data"),
    [
        ("_INBOX.queue.abc.1", None, b'{"option":"safe_on"}'),  # a request
        ("", {"Qs-Status-Seq": "e:3"}, b'{"msg":"RE Manager"}'),  # an event
        ("", None, b'{"type":"plan"}'),  # a body that merely has a `type`
        ("", None, b""),
    ],
)
def test_the_services_own_messages_are_not(
    reply: str, headers: dict[str, str] | None, data: bytes
) -> None:
    assert not from_jetstream(reply, headers, data)
