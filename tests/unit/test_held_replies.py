"""The bookkeeping of large replies held for fetching in parts (ADR 8)."""

from __future__ import annotations

import pytest

from qserver.errors import NotFound, Refused
from qserver.protocol.reply_parts import count_parts, part_size
from services.runtime.held_replies import HeldReplies


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_parts_put_together_give_the_reply_and_the_last_part_drops_it() -> None:
    replies = HeldReplies()
    data = bytes(range(256)) * 40  # 10,240 bytes
    token, parts = replies.hold("queue_get", data, 1000)
    assert parts == 11 and replies.owns(token)
    got = [replies.part("queue_get", token, i) for i in reversed(range(parts))]
    assert b"".join(reversed(got)) == data
    assert replies.held_bytes == 0
    with pytest.raises(NotFound, match="no longer held"):
        replies.part("queue_get", token, 0)


def test_a_token_is_good_only_for_its_method_and_its_parts() -> None:
    replies = HeldReplies()
    token, parts = replies.hold("history_get", b"x" * 2500, 1000)
    with pytest.raises(NotFound, match="no longer held"):
        replies.part("queue_get", token, 0)
    with pytest.raises(NotFound, match="parts 0 to 2, not 3"):
        replies.part("history_get", token, parts)
    assert replies.part("history_get", token, 2) == b"x" * 500


def test_another_process_tokens_are_not_ours() -> None:
    a, b = HeldReplies(), HeldReplies()
    token, _ = a.hold("queue_get", b"x" * 10, 4)
    assert a.owns(token) and not b.owns(token)


def test_a_reply_nobody_fetches_expires() -> None:
    clock = Clock()
    replies = HeldReplies(hold_s=30.0, clock=clock)
    token, _ = replies.hold("queue_get", b"x" * 3000, 1000)
    clock.now = 20.0
    replies.part("queue_get", token, 0)  # fetching keeps it
    clock.now = 45.0
    replies.part("queue_get", token, 1)
    clock.now = 75.1
    replies.expire()
    assert replies.held_bytes == 0
    with pytest.raises(NotFound):
        replies.part("queue_get", token, 2)


def test_held_memory_is_bounded_with_a_clear_refusal() -> None:
    replies = HeldReplies(max_bytes=5000)
    replies.hold("queue_get", b"x" * 3000, 1000)
    with pytest.raises(Refused, match="already holds 3,000 bytes"):
        replies.hold("history_get", b"x" * 3000, 1000)
    assert replies.held_bytes == 3000


def test_part_sizes_leave_room_for_headers() -> None:
    assert part_size(1_048_576) == 1_047_552
    assert count_parts(1_047_552 * 3, 1_047_552) == 3
    assert count_parts(1_047_552 * 3 + 1, 1_047_552) == 4
